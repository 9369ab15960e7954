#include "autograd/functions/softmax.h"

#include "kernels/softmax.h"

namespace coil::autograd {

Variable softmax(const Variable& x) {
  Tensor y = kernels::softmax_forward(x.value());
  return record_fn("softmax", {x}, y,
                   [y](const Grads& g) { return Grads{kernels::softmax_backward(g[0], y)}; });
}

Variable log_softmax(const Variable& x) {
  Tensor y = kernels::log_softmax_forward(x.value());
  return record_fn("log_softmax", {x}, y,
                   [y](const Grads& g) { return Grads{kernels::log_softmax_backward(g[0], y)}; });
}

}  // namespace coil::autograd
