#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "kernels/conv1d.h"
#include "kernels/selective_scan.h"
#include "layers/mixer.h"

namespace coil::layers {

CausalConv1d::CausalConv1d(int64_t channels, int64_t width, bool has_bias, Generator& gen,
                           DType param_dtype)
    : channels(channels), width(width) {
  // nn.Conv1d(groups=channels): fan_in = (in_channels / groups) * width = width.
  weight = register_parameter("weight", init_kaiming_uniform({channels, 1, width}, width, gen, param_dtype));
  if (has_bias)
    bias = register_parameter("bias", init_kaiming_uniform({channels}, width, gen, param_dtype), true);
}

MambaMixer::MambaMixer(const ModelConfig& cfg, Generator& gen, LinearInit in_init,
                       LinearInit out_init, DType param_dtype)
    : d_model(cfg.d_model),
      d_inner(cfg.d_inner()),
      d_state(cfg.mamba.d_state),
      d_conv(cfg.mamba.d_conv),
      dt_rank(cfg.dt_rank()) {
  // A_log and D first: PyTorch lists a module's own parameters before its children's.
  std::vector<double> a_log(static_cast<size_t>(d_inner * d_state));
  for (int64_t d = 0; d < d_inner; ++d)
    for (int64_t n = 0; n < d_state; ++n) a_log[size_t(d * d_state + n)] = std::log(double(n + 1));
  A_log = register_parameter("A_log", Tensor::from_vector(a_log, {d_inner, d_state}, param_dtype),
                             true);
  D = register_parameter("D", Tensor::ones({d_inner}, param_dtype), true);

  // Random draws in the reference's construction order.
  in_proj = register_module("in_proj", std::make_shared<Linear>(d_model, 2 * d_inner, cfg.bias, gen,
                                                                in_init, param_dtype));
  conv1d = register_module("conv1d", std::make_shared<CausalConv1d>(d_inner, d_conv, cfg.mamba.conv_bias,
                                                                    gen, param_dtype));
  x_proj = register_module("x_proj", std::make_shared<Linear>(d_inner, dt_rank + 2 * d_state, false,
                                                              gen, in_init, param_dtype));
  // dt_proj weight ~ U(+-dt_scale * dt_rank^-0.5): Linear's default bound 1/sqrt(in) times dt_scale.
  dt_proj = register_module("dt_proj", std::make_shared<Linear>(dt_rank, d_inner, true, gen,
                                                                LinearInit{0.0, cfg.mamba.dt_scale},
                                                                param_dtype));
  // dt_proj bias: the inverse softplus of dt ~ exp(U[log dt_min, log dt_max]), floored.
  {
    std::vector<double> u(static_cast<size_t>(d_inner));
    gen.uniform(u.data(), d_inner);
    double lo = std::log(cfg.mamba.dt_min), hi = std::log(cfg.mamba.dt_max);
    std::vector<double> inv(u.size());
    for (size_t i = 0; i < u.size(); ++i) {
      double dt = std::max(std::exp(u[i] * (hi - lo) + lo), cfg.mamba.dt_init_floor);
      inv[i] = dt + std::log(-std::expm1(-dt));
    }
    Tensor b = Tensor::from_vector(inv, {d_inner}, param_dtype);
    Tensor dst = dt_proj->bias->var.value();
    dst.copy_(b);
  }
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_inner, d_model, cfg.bias, gen,
                                                                  out_init, param_dtype));
}

int64_t MambaMixer::matmul_parameters() const {
  return in_proj->weight->numel() + conv1d->weight->numel() + x_proj->weight->numel() +
         dt_proj->weight->numel() + out_proj->weight->numel();
}

namespace {

// STOPGAP until autograd/functions/selective_scan.h and conv1d.h land: the two fused ops as
// recorded functions over the kernels (kernels/selective_scan.h, kernels/conv1d.h). Swap for
// the autograd ops when they exist; the math and layouts are the kernels' either way.
Variable scan_op(const Variable& u, const Variable& delta, const Variable& A, const Variable& B,
                 const Variable& C, const Variable& D, const Variable& z, const Variable& delta_bias) {
  kernels::ScanArgs args;
  args.u = u.value();
  args.delta = delta.value();
  args.A = A.value();
  args.B = B.value();
  args.C = C.value();
  args.D = D.value();
  args.z = z.value();
  args.delta_bias = delta_bias.value();
  args.delta_softplus = true;
  bool train = autograd::any_requires_grad({u, delta, A, B, C, D, z, delta_bias});
  kernels::ScanResult res = kernels::selective_scan_forward(args, train);
  return autograd::record_fn(
      "selective_scan", {u, delta, A, B, C, D, z, delta_bias}, res.out,
      [args, res](const autograd::Grads& g) {
        kernels::ScanGrads d = kernels::selective_scan_backward(args, res, g[0], Tensor());
        return autograd::Grads{d.du, d.ddelta, d.dA, d.dB, d.dC, d.dD, d.dz, d.ddelta_bias};
      });
}

Variable conv_op(const Variable& x, const Variable& weight, const Variable& bias) {
  Tensor out = kernels::conv1d_forward(x.value(), weight.value(), bias.defined() ? bias.value() : Tensor(), true);
  Tensor xv = x.value(), wv = weight.value(), bv = bias.defined() ? bias.value() : Tensor();
  std::vector<Variable> inputs{x, weight};
  if (bias.defined()) inputs.push_back(bias);
  return autograd::record_fn("causal_conv1d_silu", inputs, out, [xv, wv, bv](const autograd::Grads& g) {
    kernels::Conv1dGrads d = kernels::conv1d_backward(g[0], xv, wv, bv, true);
    autograd::Grads out{d.dx, d.dweight};
    if (bv.defined()) out.push_back(d.dbias);
    return out;
  });
}

// fp32 parameters go to the GPU kernels as they are (A, D, delta_bias, conv weights: the
// kernels take fp32); on the CPU every tensor of an op shares the compute dtype.
Variable kernel_param(const Parameter& p, const Variable& like) {
  if (like.device().is_cuda() && p.var.dtype() == DType::f32) return p.var;
  return p.compute(like.dtype());
}

}  // namespace

// The reference Mamba.forward, channel-major (B, di, L) around the conv and the scan:
//   xz = in_proj(x) -> (B, 2di, L); x, z = split; x = silu(conv1d(x));
//   dt, B, C = split(x_proj(x^T)); delta = dt_proj.weight @ dt (bias: the scan's delta_bias);
//   y = scan(x, delta, -exp(A_log), B, C, D, z, dt_proj.bias, softplus); out_proj(y^T).
Variable MambaMixer::forward(const Variable& x) const {
  COIL_CHECK(x.dim() == 3 && x.size(2) == d_model, "MambaMixer: x must be [B, L, {}], got {}", d_model,
             describe(x.value()));
  int64_t Bn = x.size(0), L = x.size(1);
  Variable xz = autograd::transpose(in_proj->forward(x), 1, 2);  // (B, 2di, L)
  auto xz_parts = autograd::split(xz, {d_inner, d_inner}, 1);
  Variable xs = xz_parts[0], z = xz_parts[1];
  Variable w = autograd::reshape(kernel_param(*conv1d->weight, xs), {d_inner, d_conv});
  Variable cb = conv1d->bias ? kernel_param(*conv1d->bias, xs) : Variable();
  xs = conv_op(xs, w, cb);  // (B, di, L)

  Variable x_dbl = x_proj->forward(autograd::reshape(autograd::transpose(xs, 1, 2), {Bn * L, d_inner}));
  auto dbc = autograd::split(x_dbl, {dt_rank, d_state, d_state}, 1);
  Variable delta = dt_proj->forward_no_bias(dbc[0]);  // (B*L, di)
  delta = autograd::transpose(autograd::reshape(delta, {Bn, L, d_inner}), 1, 2);
  Variable Bm = autograd::transpose(autograd::reshape(dbc[1], {Bn, L, d_state}), 1, 2);  // (B, N, L)
  Variable Cm = autograd::transpose(autograd::reshape(dbc[2], {Bn, L, d_state}), 1, 2);

  Variable A = autograd::scale(autograd::exp(kernel_param(*A_log, xs)), -1.0);
  Variable y = scan_op(xs, delta, A, Bm, Cm, kernel_param(*D, xs), z, kernel_param(*dt_proj->bias, xs));
  return out_proj->forward(autograd::transpose(y, 1, 2));  // (B, L, di) -> (B, L, d)
}

}  // namespace coil::layers
