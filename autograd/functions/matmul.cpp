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

namespace {

// The backward of x [..., in] @ W^T (+ b) computed as one product per block of W's rows
// (pieces[i] rows from offset[i]); a single block is the plain linear. With x2 = x as
// [rows, in] and G_i block i's output gradient [rows, pieces[i]]: dx2 = sum_i G_i W_i,
// summed by the products (each adds into the previous one's output, and the first into the
// engine's sum of x's gradient when it offers one); dW_i = G_i^T x2 and db_i = the sum of
// G_i's rows, each written into its rows of one gradient.
struct LinearNode : Node {
  LinearNode(const char* name, std::vector<int64_t> pieces, Tensor saved_x, Tensor saved_w, Shape x_shape)
      : Node(name), pieces(std::move(pieces)), x(std::move(saved_x)), w(std::move(saved_w)),
        x_shape(std::move(x_shape)) {}

  Grads backward(const Grads& g) override { return backward_into(g, Grads(next_edges.size())); }

  Grads backward_into(const Grads& g, const Grads& sums) override {
    const bool gx = needs_input_grad(0), gw = needs_input_grad(1), gb = needs_input_grad(2);
    const DType dtype = g[0].dtype();
    const Device device = g[0].device();
    const int64_t in = x_shape.back();
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < x_shape.size(); ++i) rows *= x_shape[i];
    int64_t out = 0;
    for (int64_t p : pieces) out += p;
    const bool into_sum = gx && !sums.empty() && sums[0].defined();
    Tensor dx = gx ? (into_sum ? sums[0].reshape({rows, in}) : Tensor::empty({rows, in}, dtype, device)) : Tensor();
    Tensor dw = gw ? Tensor::empty({out, in}, dtype, device) : Tensor();
    Tensor db = gb ? Tensor::empty({out}, dtype, device) : Tensor();
    int64_t offset = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      const int64_t end = offset + pieces[i];
      const Tensor G = g[i].reshape({rows, pieces[i]});
      if (gx) kernels::matmul_into(G, w.narrow0(offset, end), false, false, dx, /*accumulate=*/into_sum || i > 0);
      if (gw) kernels::matmul_into(G, x.reshape({rows, in}), true, false, dw.narrow0(offset, end));
      if (gb) db.narrow0(offset, end).copy_(kernels::sum_to_suffix(G, {pieces[i]}));
      offset = end;
    }
    return Grads{gx && !into_sum ? dx.reshape(x_shape) : Tensor(), dw, db};
  }

  void release_saved() override {
    x = Tensor();
    w = Tensor();
  }

  std::vector<int64_t> pieces;
  Tensor x, w;  // x when W needs a gradient, W when x does
  Shape x_shape;
};

std::vector<Variable> record_linear(const char* name, const Variable& x, const Variable& weight, const Variable& bias,
                                    std::vector<int64_t> pieces, const std::vector<Tensor>& outputs) {
  const bool has_bias = bias.defined() && bias.value().defined();
  auto node = std::make_shared<LinearNode>(name, std::move(pieces), weight.requires_grad() ? x.value() : Tensor(),
                                           x.requires_grad() ? weight.value() : Tensor(), x.shape());
  return record(node, {x, weight, has_bias ? bias : Variable()}, outputs);
}

}  // namespace

Variable linear(const Variable& x, const Variable& weight, const Variable& bias) {
  const bool has_bias = bias.defined() && bias.value().defined();
  Tensor y = kernels::linear(x.value(), weight.value(), has_bias ? bias.value() : Tensor());
  return record_linear("linear", x, weight, bias, {weight.size(0)}, {y})[0];
}

std::vector<Variable> linear_split(const Variable& x, const Variable& weight, const Variable& bias,
                                   const std::vector<int64_t>& sizes) {
  const bool has_bias = bias.defined() && bias.value().defined();
  int64_t total = 0;
  for (int64_t size : sizes) {
    COIL_CHECK(size > 0, "linear_split: piece sizes must be positive, got {}", size);
    total += size;
  }
  COIL_CHECK(weight.dim() == 2 && weight.size(0) == total,
             "linear_split: the pieces add up to {} rows, but the weight is {}", total, describe(weight.value()));
  std::vector<Tensor> ys;
  int64_t offset = 0;
  for (int64_t size : sizes) {
    ys.push_back(kernels::linear(x.value(), weight.value().narrow0(offset, offset + size),
                                 has_bias ? bias.value().narrow0(offset, offset + size) : Tensor()));
    offset += size;
  }
  return record_linear("linear_split", x, weight, bias, sizes, ys);
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
