#include "kernels/softmax.h"

#include "kernels/dispatch.h"

namespace coil::kernels {
namespace {

void check_input(const char* op, const Tensor& x) {
  check_defined(op, x, "input");
  check_dtype(op, x, {DType::f32, DType::f64, DType::bf16});
  COIL_CHECK(x.dim() >= 1, "{}: the input must have at least one dimension, got {}", op, describe(x));
}

Tensor forward(const char* op, const Tensor& x, bool log) {
  check_input(op, x);
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return y;
  COIL_DISPATCH(op, x.device(), cpu::softmax_forward(x, y, log), cuda::softmax_forward(x, y, log));
  return y;
}

Tensor backward(const char* op, const Tensor& grad_y, const Tensor& y, bool log) {
  check_input(op, y);
  check_defined(op, grad_y, "gradient");
  check_same_device(op, grad_y, y);
  check_same_dtype(op, grad_y, y);
  check_same_shape(op, grad_y, y);
  Tensor dx = Tensor::empty(y.shape(), y.dtype(), y.device());
  if (y.numel() == 0) return dx;
  COIL_DISPATCH(op, y.device(), cpu::softmax_backward(grad_y, y, dx, log), cuda::softmax_backward(grad_y, y, dx, log));
  return dx;
}

}  // namespace

Tensor softmax_forward(const Tensor& x) { return forward("softmax", x, false); }
Tensor log_softmax_forward(const Tensor& x) { return forward("log_softmax", x, true); }
Tensor softmax_backward(const Tensor& grad_y, const Tensor& y) {
  return backward("softmax_backward", grad_y, y, false);
}
Tensor log_softmax_backward(const Tensor& grad_y, const Tensor& y) {
  return backward("log_softmax_backward", grad_y, y, true);
}

}  // namespace coil::kernels
