#include "autograd/functions/rope.h"

namespace coil::autograd {

Variable rope(const Variable& x, const kernels::RopeOptions& options) {
  COIL_CHECK(x.defined(), "rope: x must be defined");
  Tensor y = kernels::rope(x.value(), options);
  return record_fn("rope", {x}, y, [options](const Grads& g) {
    return Grads{kernels::rope_backward(g[0], options)};
  });
}

}  // namespace coil::autograd
