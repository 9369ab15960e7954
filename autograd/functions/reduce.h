#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

Variable sum(const Variable& x, int64_t dim, bool keepdim = false);
Variable mean(const Variable& x, int64_t dim, bool keepdim = false);
Variable sum_all(const Variable& x);   // a scalar
Variable mean_all(const Variable& x);  // a scalar

}  // namespace coil::autograd
