#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

// weight [V, D], ids (i32 or i64, any shape S) -> [S..., D]. An id outside [0, V) is an error
// naming the id and where it is.
Variable embedding(const Variable& weight, const Tensor& ids);

}  // namespace coil::autograd
