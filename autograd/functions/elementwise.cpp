#include "autograd/functions/elementwise.h"

#include "kernels/elementwise.h"
#include "kernels/reduce.h"

namespace coil::autograd {
namespace {

// The gradient of an operand that was broadcast over a's leading dims, summed back to its shape.
Tensor reduce_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  return kernels::sum_to_suffix(g, shape);
}

Variable unary_op(kernels::UnaryOp op, const Variable& x) {
  Tensor y = kernels::unary(op, x.value());
  Tensor saved = x.value();
  return record_fn(kernels::unary_op_name(op), {x}, y, [op, saved](const Grads& g) {
    return Grads{kernels::unary_backward(op, g[0], saved)};
  });
}

}  // namespace

Variable add(const Variable& a, const Variable& b) {
  Tensor y = kernels::add(a.value(), b.value());
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Shape bs = b.shape();
  return record_fn("add", {a, b}, y, [ga, gb, bs](const Grads& g) {
    return Grads{ga ? g[0] : Tensor(), gb ? reduce_to(g[0], bs) : Tensor()};
  });
}

Variable sub(const Variable& a, const Variable& b) {
  Tensor y = kernels::sub(a.value(), b.value());
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Shape bs = b.shape();
  return record_fn("sub", {a, b}, y, [ga, gb, bs](const Grads& g) {
    return Grads{ga ? g[0] : Tensor(), gb ? kernels::scale(reduce_to(g[0], bs), -1.0) : Tensor()};
  });
}

Variable mul(const Variable& a, const Variable& b) {
  Tensor y = kernels::mul(a.value(), b.value());
  bool ga = a.requires_grad(), gb = b.requires_grad();
  // Save only what the wanted gradients read: d/da = g * b, d/db = sum(g * a).
  Tensor sa = gb ? a.value() : Tensor(), sb = ga ? b.value() : Tensor();
  Shape bs = b.shape();
  return record_fn("mul", {a, b}, y, [ga, gb, sa, sb, bs](const Grads& g) {
    return Grads{ga ? kernels::mul(g[0], sb) : Tensor(), gb ? reduce_to(kernels::mul(g[0], sa), bs) : Tensor()};
  });
}

Variable div(const Variable& a, const Variable& b) {
  Tensor y = kernels::div(a.value(), b.value());
  bool ga = a.requires_grad(), gb = b.requires_grad();
  Tensor sa = gb ? a.value() : Tensor(), sb = b.value();
  // d/da = g / b; d/db = -sum(g * a) / b^2
  return record_fn("div", {a, b}, y, [ga, gb, sa, sb](const Grads& g) {
    Tensor da, db;
    if (ga) da = kernels::div(g[0], sb);
    if (gb) {
      Tensor s = reduce_to(kernels::mul(g[0], sa), sb.shape());
      db = kernels::scale(kernels::div(kernels::div(s, sb), sb), -1.0);
    }
    return Grads{da, db};
  });
}

Variable scale(const Variable& x, double factor) {
  Tensor y = kernels::scale(x.value(), factor);
  return record_fn("scale", {x}, y, [factor](const Grads& g) { return Grads{kernels::scale(g[0], factor)}; });
}

Variable exp(const Variable& x) { return unary_op(kernels::UnaryOp::exp, x); }
Variable log(const Variable& x) { return unary_op(kernels::UnaryOp::log, x); }
Variable sigmoid(const Variable& x) { return unary_op(kernels::UnaryOp::sigmoid, x); }
Variable silu(const Variable& x) { return unary_op(kernels::UnaryOp::silu, x); }
Variable gelu(const Variable& x) { return unary_op(kernels::UnaryOp::gelu, x); }
Variable softplus(const Variable& x) { return unary_op(kernels::UnaryOp::softplus, x); }

Variable swiglu(const Variable& h) {
  Tensor y = kernels::swiglu(h.value());
  Tensor saved = h.value();
  return record_fn("swiglu", {h}, y, [saved](const Grads& g) { return Grads{kernels::swiglu_backward(g[0], saved)}; });
}

Variable to_dtype(const Variable& x, DType dtype) {
  COIL_CHECK(is_floating(dtype) && is_floating(x.dtype()),
             "to_dtype: differentiable casts are between floating dtypes, got {} to {}", describe(x.value()),
             dtype_name(dtype));
  Tensor y = kernels::to_dtype(x.value(), dtype);
  DType from = x.dtype();
  return record_fn("to_dtype", {x}, y, [from](const Grads& g) { return Grads{kernels::to_dtype(g[0], from)}; });
}

}  // namespace coil::autograd
