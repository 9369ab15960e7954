#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

Variable softmax(const Variable& x);      // over the last dim, fp32 math
Variable log_softmax(const Variable& x);  // over the last dim

}  // namespace coil::autograd
