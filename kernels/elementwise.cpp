#include "kernels/elementwise.h"

#include "kernels/dispatch.h"

namespace coil::kernels {

const char* binary_op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
  }
  return "binary";
}

const char* unary_op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::silu: return "silu";
    case UnaryOp::gelu: return "gelu";
    case UnaryOp::softplus: return "softplus";
  }
  return "unary";
}

namespace {

void check_float(const char* op, const Tensor& t) {
  COIL_CHECK(is_floating(t.dtype()), "{}: expected a floating tensor (f32, f64, bf16), got {}", op,
             describe(t));
}

}  // namespace

void check_broadcastable(const char* op, const Tensor& a, const Tensor& b) {
  check_defined(op, a, "a");
  check_defined(op, b, "b");
  check_same_device(op, a, b);
  check_same_dtype(op, a, b);
  check_float(op, a);
  if (b.numel() == 1) return;
  const Shape& sa = a.shape();
  const Shape& sb = b.shape();
  bool suffix = sb.size() <= sa.size() && std::equal(sb.begin(), sb.end(), sa.end() - ptrdiff_t(sb.size()));
  COIL_CHECK(suffix,
             "{}: b must have a's shape, a suffix of it, or one element (b broadcasts over a's "
             "leading dims): a is {}, b is {}",
             op, describe(a), describe(b));
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = binary_op_name(op);
  check_broadcastable(name, a, b);
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  if (a.numel() == 0) return out;
  COIL_DISPATCH(name, a.device(), cpu::binary(op, a, b, out), cuda::binary(op, a, b, out));
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::div, a, b); }

Tensor scale(const Tensor& x, double factor) {
  check_defined("scale", x, "x");
  check_float("scale", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  COIL_DISPATCH("scale", x.device(), cpu::scale(x, factor, out), cuda::scale(x, factor, out));
  return out;
}

Tensor unary(UnaryOp op, const Tensor& x) {
  const char* name = unary_op_name(op);
  check_defined(name, x, "x");
  check_float(name, x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  COIL_DISPATCH(name, x.device(), cpu::unary(op, x, out), cuda::unary(op, x, out));
  return out;
}

Tensor exp(const Tensor& x) { return unary(UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::log, x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::sigmoid, x); }
Tensor silu(const Tensor& x) { return unary(UnaryOp::silu, x); }
Tensor gelu(const Tensor& x) { return unary(UnaryOp::gelu, x); }
Tensor softplus(const Tensor& x) { return unary(UnaryOp::softplus, x); }

Tensor unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x) {
  std::string name = std::string(unary_op_name(op)) + " backward";
  check_defined(name.c_str(), grad, "grad");
  check_defined(name.c_str(), x, "x");
  check_same_device(name.c_str(), grad, x);
  check_same_dtype(name.c_str(), grad, x);
  check_same_shape(name.c_str(), grad, x);
  check_float(name.c_str(), x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  COIL_DISPATCH(name.c_str(), x.device(), cpu::unary_backward(op, grad, x, out),
                cuda::unary_backward(op, grad, x, out));
  return out;
}

namespace {

// h [..., 2n] with n >= 1: the shape of swiglu's output, [..., n].
Shape swiglu_out_shape(const char* op, const Tensor& h) {
  check_defined(op, h, "h");
  check_float(op, h);
  COIL_CHECK(h.dim() >= 1 && h.size(-1) >= 2 && h.size(-1) % 2 == 0,
             "{}: h must be [..., 2n], the two halves (a | g) of a fused up-projection, got {}", op,
             describe(h));
  Shape s = h.shape();
  s.back() /= 2;
  return s;
}

}  // namespace

Tensor swiglu(const Tensor& h) {
  Tensor out = Tensor::empty(swiglu_out_shape("swiglu", h), h.dtype(), h.device());
  if (out.numel() == 0) return out;
  COIL_DISPATCH("swiglu", h.device(), cpu::swiglu(h, out), cuda::swiglu(h, out));
  return out;
}

Tensor swiglu_backward(const Tensor& grad, const Tensor& h) {
  const char* op = "swiglu backward";
  Shape s = swiglu_out_shape(op, h);
  check_defined(op, grad, "grad");
  check_same_device(op, grad, h);
  check_same_dtype(op, grad, h);
  COIL_CHECK(grad.shape() == s, "{}: grad must be h's shape with half its last dim ({}), got {}", op,
             shape_str(s), describe(grad));
  Tensor dh = Tensor::empty(h.shape(), h.dtype(), h.device());
  if (dh.numel() == 0) return dh;
  COIL_DISPATCH(op, h.device(), cpu::swiglu_backward(grad, h, dh), cuda::swiglu_backward(grad, h, dh));
  return dh;
}

Tensor to_dtype(const Tensor& x, DType dtype) {
  check_defined("to_dtype", x, "x");
  if (x.dtype() == dtype) return x;
  return x.to(dtype);
}

}  // namespace coil::kernels
