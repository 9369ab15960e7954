#include "autograd/functions/norm.h"

#include "kernels/norm.h"

namespace coil::autograd {
namespace {

// rms_norm / layer_norm: inputs {x, weight, bias}; bias may be undefined.
Variable plain_norm(const char* name, const Variable& x, const Variable& weight, const Variable& bias,
                    double eps, bool rms) {
  COIL_CHECK(x.defined() && weight.defined(), "{}: the input and the weight must be defined", name);
  Tensor b = bias.defined() ? bias.value() : Tensor();
  kernels::NormForward f = kernels::norm_forward(x.value(), Tensor(), weight.value(), b, eps, rms, false);
  Tensor xv = x.value(), wv = weight.value(), mean = f.mean, rstd = f.rstd;
  bool has_bias = bias.defined();
  return record_fn(name, {x, weight, bias}, f.y, [=](const Grads& g) {
    kernels::NormBackward d =
        kernels::norm_backward(g[0], xv, mean, rstd, wv, has_bias, Tensor(), xv.dtype(), false, rms);
    return Grads{d.dx, d.dweight, d.dbias};
  });
}

// The fused residual add + norm: inputs {x, residual, weight, bias}, outputs {normed, residual'}.
NormResidual add_norm(const char* name, const Variable& x, const Variable& residual, const Variable& weight,
                      const Variable& bias, double eps, bool rms) {
  COIL_CHECK(x.defined() && weight.defined(), "{}: the input and the weight must be defined", name);
  Tensor b = bias.defined() ? bias.value() : Tensor();
  Tensor res = residual.defined() ? residual.value() : Tensor();
  kernels::NormForward f = kernels::norm_forward(x.value(), res, weight.value(), b, eps, rms, true);
  Tensor r = f.residual, wv = weight.value(), mean = f.mean, rstd = f.rstd;
  DType x_dtype = x.dtype();
  bool has_bias = bias.defined(), has_residual = residual.defined();
  auto node = std::make_shared<LambdaNode>(name, [=](const Grads& g) {
    // g[1]: the gradient reaching residual' (zeros from the engine when it had no consumer).
    kernels::NormBackward d =
        kernels::norm_backward(g[0], r, mean, rstd, wv, has_bias, g[1], x_dtype, has_residual, rms);
    return Grads{d.dx, d.dresidual, d.dweight, d.dbias};
  });
  std::vector<Variable> out = record(node, {x, residual, weight, bias}, {f.y, f.residual});
  return {out[0], out[1]};
}

}  // namespace

Variable rms_norm(const Variable& x, const Variable& weight, double eps) {
  return plain_norm("rms_norm", x, weight, Variable(), eps, true);
}

Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps) {
  return plain_norm("layer_norm", x, weight, bias, eps, false);
}

NormResidual add_rms_norm(const Variable& x, const Variable& residual, const Variable& weight, double eps) {
  return add_norm("add_rms_norm", x, residual, weight, Variable(), eps, true);
}

NormResidual add_layer_norm(const Variable& x, const Variable& residual, const Variable& weight,
                            const Variable& bias, double eps) {
  return add_norm("add_layer_norm", x, residual, weight, bias, eps, false);
}

}  // namespace coil::autograd
