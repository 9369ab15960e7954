#include "autograd/functions/conv1d.h"

#include "kernels/conv1d.h"

namespace coil::autograd {

Variable conv1d(const Variable& x, const Variable& weight, const Variable& bias, bool silu) {
  COIL_CHECK(x.defined() && weight.defined(), "conv1d: x and weight must be defined");
  Tensor xv = x.value(), wv = weight.value(), bv = bias.defined() ? bias.value() : Tensor();
  Tensor out = kernels::conv1d_forward(xv, wv, bv, silu);
  return record_fn("conv1d", {x, weight, bias}, out, [=](const Grads& g) {
    kernels::Conv1dGrads d = kernels::conv1d_backward(g[0], xv, wv, bv, silu);
    return Grads{d.dx, d.dweight, d.dbias};
  });
}

}  // namespace coil::autograd
