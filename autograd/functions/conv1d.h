// Depthwise causal conv1d (+ bias, + optional SiLU) as a differentiable op; saves x (the
// backward recomputes the pre-activation). Layouts and limits: kernels/conv1d.h.
#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

// x (batch, length, dim), weight (dim, width), bias (dim) or undefined.
Variable conv1d(const Variable& x, const Variable& weight, const Variable& bias, bool silu);

}  // namespace coil::autograd
