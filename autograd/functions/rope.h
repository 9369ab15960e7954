// Rotary position embedding as a differentiable op (kernels/rope.h for the convention and
// the shapes; a packed qkv (B, T, 3, H, hd) has q and k rotated and v passed through).
// Saves nothing: the backward is the rotation by the negative angle.
#pragma once
#include "autograd/variable.h"
#include "kernels/rope.h"

namespace coil::autograd {

Variable rope(const Variable& x, const kernels::RopeOptions& options = {});

}  // namespace coil::autograd
