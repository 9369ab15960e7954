#include "autograd/functions/matmul.h"

#include "kernels/matmul.h"
#include "kernels/reduce.h"

namespace coil::autograd {

// C = A' B' with A' = op(A), B' = op(B): dA' = G B'^T and dB' = A'^T G, written as products
// of the stored operands with transpose flags (no transposed copies are made).
Variable matmul(const Variable& a, const Variable& b, bool transpose_a, bool transpose_b) {
  Tensor y = kernels::matmul(a.value(), b.value(), transpose_a, transpose_b);
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor sa = gb ? a.value() : Tensor(), sb = ga ? b.value() : Tensor();
  bool ta = transpose_a, tb = transpose_b;
  return record_fn("matmul", {a, b}, y, [ga, gb, sa, sb, ta, tb](const Grads& g) {
    const Tensor& G = g[0];
    Tensor da, db;
    if (ga) da = ta ? kernels::matmul(sb, G, tb, true) : kernels::matmul(G, sb, false, !tb);
    if (gb) db = tb ? kernels::matmul(G, sa, true, ta) : kernels::matmul(sa, G, !ta, false);
    return Grads{da, db};
  });
}

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  bool has_bias = bias.defined() && bias.value().defined();
  Tensor y = kernels::linear(x.value(), weight.value(), has_bias ? bias.value() : Tensor());
  bool gx = x.requires_grad(), gw = weight.requires_grad(), gbias = has_bias && bias.requires_grad();
  Tensor sx = gw ? x.value() : Tensor(), sw = gx ? weight.value() : Tensor();
  Shape x_shape = x.shape();
  int64_t in = weight.size(1), out = weight.size(0);
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < x_shape.size(); ++i) rows *= x_shape[i];
  // y2 = x2 W^T + b with x2 [rows, in]: dx2 = G W, dW = G^T x2, db = sum of G's rows.
  return record_fn("linear", {x, weight, has_bias ? bias : Variable()}, y,
                   [=](const Grads& g) {
                     Tensor G = g[0].reshape({rows, out});
                     Tensor dx, dw, db;
                     if (gx) dx = kernels::matmul(G, sw).reshape(x_shape);
                     if (gw) dw = kernels::matmul(G, sx.reshape({rows, in}), true, false);
                     if (gbias) db = kernels::sum_to_suffix(G, {out});
                     return Grads{dx, dw, db};
                   });
}

Variable gelu_mlp(const Variable& x, const Variable& w1, const Variable& b1, const Variable& w2, const Variable& b2) {
  auto has = [](const Variable& b) { return b.defined() && b.value().defined(); };
  kernels::LinearGelu h = kernels::linear_gelu(x.value(), w1.value(), has(b1) ? b1.value() : Tensor());
  Tensor y = kernels::linear(h.out, w2.value(), has(b2) ? b2.value() : Tensor());
  const bool gx = x.requires_grad(), gw1 = w1.requires_grad(), gb1 = has(b1) && b1.requires_grad();
  const bool gw2 = w2.requires_grad(), gb2 = has(b2) && b2.requires_grad();
  const Tensor sx = x.value(), sw1 = w1.value(), sw2 = w2.value(), pre = h.pre, act = h.out;
  const Shape x_shape = x.shape();
  const int64_t in = w1.size(1), hidden = w1.size(0), out = w2.size(0), rows = x.numel() / in;
  // y2 = a2 W2^T + b2 with a2 = gelu(pre2) [rows, hidden], pre2 = x2 W1^T + b1:
  // dW2 = G^T a2, db2 = sum of G's rows, dpre2 = (G W2) * gelu'(pre2), then linear's for fc1.
  return record_fn("gelu_mlp", {x, w1, has(b1) ? b1 : Variable(), w2, has(b2) ? b2 : Variable()}, y,
                   [=](const Grads& g) {
                     Tensor G = g[0].reshape({rows, out});
                     Tensor dx, dw1, db1, dw2, db2;
                     if (gw2) dw2 = kernels::matmul(G, act.reshape({rows, hidden}), true, false);
                     if (gb2) db2 = kernels::sum_to_suffix(G, {out});
                     if (gx || gw1 || gb1) {
                       Tensor dpre = kernels::matmul_dgelu(G, sw2, pre.reshape({rows, hidden}));
                       if (gx) dx = kernels::matmul(dpre, sw1).reshape(x_shape);
                       if (gw1) dw1 = kernels::matmul(dpre, sx.reshape({rows, in}), true, false);
                       if (gb1) db1 = kernels::sum_to_suffix(dpre, {hidden});
                     }
                     return Grads{dx, dw1, db1, dw2, db2};
                   });
}

}  // namespace coil::autograd
