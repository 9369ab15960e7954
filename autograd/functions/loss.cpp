#include "autograd/functions/loss.h"

#include "kernels/loss.h"

namespace coil::autograd {

Variable cross_entropy(const Variable& logits, const Tensor& targets, int64_t ignore_index) {
  COIL_CHECK(logits.defined(), "cross_entropy: the logits are undefined");
  Tensor x = logits.value();
  kernels::CrossEntropyForward f = kernels::cross_entropy_forward(x, targets, ignore_index);
  Tensor t = targets.device() == x.device() ? targets : targets.to(x.device());
  Tensor lse = f.lse, count = f.count;
  return record_fn("cross_entropy", {logits}, f.loss, [=](const Grads& g) {
    return Grads{kernels::cross_entropy_backward(g[0], x, t, lse, count, ignore_index)};
  });
}

// The gradients are computed during the forward (only they are saved, not the logits);
// backward scales them by the incoming scalar gradient.
Variable linear_cross_entropy(const Variable& hidden, const Variable& weight, const Tensor& targets,
                              int64_t ignore_index) {
  COIL_CHECK(hidden.defined() && weight.defined(), "linear_cross_entropy: hidden and weight must be defined");
  if (!any_requires_grad({hidden, weight})) {
    // Evaluation: the same chunked pass without the gradient products.
    return Variable(
        kernels::linear_cross_entropy_forward(hidden.value(), weight.value(), targets, ignore_index, 0, false).loss);
  }
  kernels::LinearCrossEntropyForward f =
      kernels::linear_cross_entropy_forward(hidden.value(), weight.value(), targets, ignore_index);
  Tensor gh = hidden.requires_grad() ? f.grad_hidden : Tensor();
  Tensor gw = weight.requires_grad() ? f.grad_weight : Tensor();
  return record_fn("linear_cross_entropy", {hidden, weight}, f.loss, [gh, gw](const Grads& g) {
    return Grads{gh.defined() ? kernels::scale_by_scalar(gh, g[0]) : Tensor(),
                 gw.defined() ? kernels::scale_by_scalar(gw, g[0]) : Tensor()};
  });
}

}  // namespace coil::autograd
