#include "kernels/conv1d.h"

namespace coil::kernels {
namespace {

void check_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_defined(op, x, "x");
  check_defined(op, weight, "weight");
  COIL_CHECK(x.dim() == 3, "{}: x must be (batch, length, dim), got {}", op, describe(x));
  COIL_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2),
             "{}: weight must be (dim, width) with dim = {}, got {} (reshape a (dim, 1, width) weight)", op,
             x.size(2), describe(weight));
  COIL_CHECK(weight.size(1) >= 1 && weight.size(1) <= kConv1dMaxWidth,
             "{}: width {} is outside the supported 1..{}: weight {}", op, weight.size(1), kConv1dMaxWidth,
             describe(weight));
  check_same_device(op, x, weight);
  if (bias.defined()) {
    COIL_CHECK(bias.dim() == 1 && bias.size(0) == x.size(2), "{}: bias must be (dim) with dim = {}, got {}", op,
               x.size(2), describe(bias));
    check_same_device(op, x, bias);
    check_same_dtype(op, weight, bias);
  }
  if (x.device().is_cpu()) {
    check_dtype(op, x, {DType::f32, DType::f64});
    check_same_dtype(op, x, weight);
  } else {
    check_dtype(op, x, {DType::f32, DType::bf16});
    check_dtype(op, weight, {DType::f32});
  }
}

}  // namespace

Tensor conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu) {
  const char* op = "conv1d_forward";
  check_args(op, x, weight, bias);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  if (x.device().is_cpu()) {
    cpu::conv1d_forward(x, weight, bias, silu, out);
    return out;
  }
#ifdef COIL_CUDA
  cuda::conv1d_forward(x, weight, bias, silu, out);
  return out;
#else
  fail("{}: {} needs CUDA, but coil was built without it", op, describe(x));
#endif
}

Conv1dGrads conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias,
                            bool silu) {
  const char* op = "conv1d_backward";
  check_args(op, x, weight, bias);
  check_defined(op, grad_out, "grad_out");
  check_same_shape(op, grad_out, x);
  check_same_dtype(op, grad_out, x);
  check_same_device(op, grad_out, x);
  Conv1dGrads g;
  g.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  g.dweight = Tensor::empty(weight.shape(), weight.dtype(), x.device());
  if (bias.defined()) g.dbias = Tensor::empty(bias.shape(), bias.dtype(), x.device());
  if (x.numel() == 0) {
    g.dweight.zero_();
    if (g.dbias.defined()) g.dbias.zero_();
    return g;
  }
  if (x.device().is_cpu()) {
    cpu::conv1d_backward(grad_out, x, weight, bias, silu, g);
    return g;
  }
#ifdef COIL_CUDA
  cuda::conv1d_backward(grad_out, x, weight, bias, silu, g);
  return g;
#else
  fail("{}: {} needs CUDA, but coil was built without it", op, describe(x));
#endif
}

}  // namespace coil::kernels
