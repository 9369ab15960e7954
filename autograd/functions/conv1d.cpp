#include "autograd/functions/conv1d.h"

#include "kernels/conv1d.h"

namespace coil::autograd {

Variable conv1d(const Variable& x, const Variable& weight, const Variable& bias, bool silu, const Tensor& seq_idx,
                const Variable& initial_state, Tensor* final_state) {
  COIL_CHECK(x.defined() && weight.defined(), "conv1d: x and weight must be defined");
  Tensor xv = x.value(), wv = weight.value(), bv = bias.defined() ? bias.value() : Tensor();
  kernels::Conv1dOptions o;
  o.seq_idx = seq_idx;
  if (initial_state.defined()) o.initial_state = initial_state.value();
  Tensor out = kernels::conv1d_forward(xv, wv, bv, silu, o, final_state);
  return record_fn("conv1d", {x, weight, bias, initial_state}, out, [=](const Grads& g) {
    kernels::Conv1dGrads d = kernels::conv1d_backward(g[0], xv, wv, bv, silu, o);
    return Grads{d.dx, d.dweight, d.dbias, d.dinitial_state};
  });
}

}  // namespace coil::autograd
