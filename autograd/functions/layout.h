#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

Variable reshape(const Variable& x, const Shape& shape);  // a free view
Variable transpose(const Variable& x, int64_t dim0, int64_t dim1);  // copies
Variable concat(const std::vector<Variable>& xs, int64_t dim);
std::vector<Variable> split(const Variable& x, const std::vector<int64_t>& sizes, int64_t dim);

}  // namespace coil::autograd
