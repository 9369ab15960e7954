#include "autograd/functions/attention.h"

namespace coil::autograd {

Variable attention(const Variable& qkv, const kernels::AttentionOptions& options) {
  COIL_CHECK(qkv.defined(), "attention: qkv must be defined");
  kernels::AttentionOutput f = kernels::attention_forward_packed(qkv.value(), options);
  if (!any_requires_grad({qkv})) return Variable(f.out);
  Tensor x = qkv.value(), out = f.out, lse = f.lse;
  return record_fn("attention", {qkv}, f.out, [=](const Grads& g) {
    return Grads{kernels::attention_backward_packed(g[0], x, out, lse, options)};
  });
}

Variable attention(const Variable& q, const Variable& k, const Variable& v,
                   const kernels::AttentionOptions& options) {
  COIL_CHECK(q.defined() && k.defined() && v.defined(), "attention: q, k and v must be defined");
  kernels::AttentionOutput f = kernels::attention_forward(q.value(), k.value(), v.value(), options);
  if (!any_requires_grad({q, k, v})) return Variable(f.out);
  Tensor qv = q.value(), kv = k.value(), vv = v.value(), out = f.out, lse = f.lse;
  return record_fn("attention", {q, k, v}, f.out, [=](const Grads& g) {
    kernels::AttentionGrads d = kernels::attention_backward(g[0], qv, kv, vv, out, lse, options);
    return Grads{d.dq, d.dk, d.dv};
  });
}

}  // namespace coil::autograd
