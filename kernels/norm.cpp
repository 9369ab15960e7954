#include "kernels/norm.h"

#include "kernels/dispatch.h"

namespace coil::kernels {

DType norm_residual_dtype(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

namespace {

void check_param(const char* op, const Tensor& p, const char* what, const Tensor& x) {
  check_defined(op, p, what);
  check_same_device(op, x, p);
  COIL_CHECK(p.dim() == 1 && p.size(0) == x.size(-1), "{}: {} must be [{}] for input {}, got {}", op,
             what, x.size(-1), describe(x), describe(p));
  bool ok = p.dtype() == x.dtype() || (x.device().is_cuda() && p.dtype() == DType::f32);
  COIL_CHECK(ok, "{}: {} {} must have the input's dtype{} ({})", op, what, describe(p),
             x.device().is_cuda() ? " or f32" : "", describe(x));
}

}  // namespace

NormForward norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight,
                         const Tensor& bias, double eps, bool rms, bool write_residual) {
  const char* op = write_residual ? (rms ? "add_rms_norm" : "add_layer_norm") : (rms ? "rms_norm" : "layer_norm");
  check_defined(op, x, "input");
  check_dtype(op, x, {DType::f32, DType::f64, DType::bf16});
  COIL_CHECK(x.dim() >= 1 && x.size(-1) > 0, "{}: the input needs a non-empty last dim, got {}", op,
             describe(x));
  check_param(op, weight, "weight", x);
  if (bias.defined()) {
    COIL_CHECK(!rms, "{}: RMSNorm takes no bias", op);
    check_param(op, bias, "bias", x);
    check_same_dtype(op, weight, bias);
  }
  DType rdt = norm_residual_dtype(x.dtype());
  if (residual.defined()) {
    COIL_CHECK(write_residual, "{}: a residual is only taken by the fused add variants", op);
    check_same_device(op, x, residual);
    check_same_shape(op, x, residual);
    COIL_CHECK(residual.dtype() == rdt, "{}: the residual {} must be {} (the residual stream is kept in {})",
               op, describe(residual), dtype_name(rdt), dtype_name(rdt));
  }
  COIL_CHECK(eps >= 0, "{}: eps must be >= 0, got {}", op, eps);
  const int64_t D = x.size(-1), rows = x.numel() / D;
  NormForward out;
  out.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (write_residual) out.residual = Tensor::empty(x.shape(), rdt, x.device());
  if (!rms) out.mean = Tensor::empty({rows}, rdt, x.device());
  out.rstd = Tensor::empty({rows}, rdt, x.device());
  if (rows == 0) return out;
  COIL_DISPATCH(op, x.device(), cpu::norm_forward(x, residual, weight, bias, eps, rms, out),
                cuda::norm_forward(x, residual, weight, bias, eps, rms, out));
  return out;
}

NormBackward norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& mean,
                           const Tensor& rstd, const Tensor& weight, bool has_bias,
                           const Tensor& grad_residual_out, DType dx_dtype, bool want_dresidual,
                           bool rms) {
  const char* op = rms ? "rms_norm_backward" : "layer_norm_backward";
  check_defined(op, grad_y, "gradient");
  check_defined(op, input, "input");
  check_defined(op, rstd, "rstd");
  check_defined(op, weight, "weight");
  check_same_device(op, grad_y, input);
  check_same_shape(op, grad_y, input);
  COIL_CHECK(grad_y.dtype() == dx_dtype, "{}: the gradient {} must be {}", op, describe(grad_y),
             dtype_name(dx_dtype));
  const int64_t D = input.size(-1), rows = input.numel() / D;
  COIL_CHECK(rstd.numel() == rows && (rms || (mean.defined() && mean.numel() == rows)),
             "{}: statistics {} do not match input {}", op, describe(rstd), describe(input));
  if (grad_residual_out.defined()) {
    check_same_shape(op, grad_residual_out, input);
    check_same_dtype(op, grad_residual_out, input);
  }
  NormBackward out;
  out.dx = Tensor::empty(input.shape(), dx_dtype, input.device());
  if (want_dresidual) out.dresidual = Tensor::empty(input.shape(), input.dtype(), input.device());
  out.dweight = Tensor::empty(weight.shape(), weight.dtype(), weight.device());
  if (has_bias) out.dbias = Tensor::empty(weight.shape(), weight.dtype(), weight.device());
  COIL_DISPATCH(op, input.device(), cpu::norm_backward(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out),
                cuda::norm_backward(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out));
  return out;
}

}  // namespace coil::kernels
