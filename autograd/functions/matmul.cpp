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

}  // namespace coil::autograd
