#include "kernels/conv1d.h"

#include "kernels/dispatch.h"
#include "kernels/documents.h"

namespace coil::kernels {
namespace {

void check_args(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv1dOptions& o) {
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
  if (o.seq_idx.defined()) check_seq_idx(op, o.seq_idx, x.size(0), x.size(1), x);
  if (o.initial_state.defined()) {
    const Shape expected{x.size(0), weight.size(1) - 1, x.size(2)};
    COIL_CHECK(o.initial_state.shape() == expected, "{}: initial_state must be (batch, width - 1, dim) = {}, got {}",
               op, shape_str(expected), describe(o.initial_state));
    check_same_device(op, x, o.initial_state);
    check_same_dtype(op, x, o.initial_state);
  }
}

}  // namespace

Tensor conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                      const Conv1dOptions& options, Tensor* final_state) {
  const char* op = "conv1d_forward";
  check_args(op, x, weight, bias, options);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor fin;
  if (final_state) {
    fin = Tensor::empty({x.size(0), weight.size(1) - 1, x.size(2)}, x.dtype(), x.device());
    *final_state = fin;
  }
  if (x.numel() == 0) {  // no time step: the state passes through
    if (fin.defined() && options.initial_state.defined()) fin.copy_(options.initial_state);
    else if (fin.defined()) fin.zero_();
    return out;
  }
  COIL_DISPATCH(op, x.device(), cpu::conv1d_forward(x, weight, bias, silu, options, out, fin),
                cuda::conv1d_forward(x, weight, bias, silu, options, out, fin));
  return out;
}

Conv1dGrads conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias,
                            bool silu, const Conv1dOptions& options) {
  const char* op = "conv1d_backward";
  check_args(op, x, weight, bias, options);
  check_defined(op, grad_out, "grad_out");
  check_same_shape(op, grad_out, x);
  check_same_dtype(op, grad_out, x);
  check_same_device(op, grad_out, x);
  Conv1dGrads g;
  g.dx = Tensor::empty(x.shape(), x.dtype(), x.device());
  g.dweight = Tensor::empty(weight.shape(), weight.dtype(), x.device());
  if (bias.defined()) g.dbias = Tensor::empty(bias.shape(), bias.dtype(), x.device());
  if (options.initial_state.defined()) g.dinitial_state = Tensor::empty(options.initial_state.shape(), x.dtype(), x.device());
  if (x.numel() == 0) {
    for (Tensor* t : {&g.dweight, &g.dbias, &g.dinitial_state})
      if (t->defined()) t->zero_();
    return g;
  }
  COIL_DISPATCH(op, x.device(), cpu::conv1d_backward(grad_out, x, weight, bias, silu, options, g),
                cuda::conv1d_backward(grad_out, x, weight, bias, silu, options, g));
  return g;
}

}  // namespace coil::kernels
