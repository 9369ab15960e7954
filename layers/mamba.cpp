#include <cmath>

#include "autograd/functions/conv1d.h"
#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "autograd/functions/selective_scan.h"
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

namespace {

// The delta bias: the inverse softplus of dt ~ exp(U[log dt_min, log dt_max]), floored, so
// that softplus(bias) starts as that dt (the reference's dt_proj.bias initialization).
Tensor init_dt_bias(const ModelConfig& cfg, int64_t d_inner, Generator& gen, DType param_dtype) {
  std::vector<double> u(static_cast<size_t>(d_inner));
  gen.uniform(u.data(), d_inner);
  double lo = std::log(cfg.mamba.dt_min), hi = std::log(cfg.mamba.dt_max);
  std::vector<double> inv(u.size());
  for (size_t i = 0; i < u.size(); ++i) {
    double dt = std::max(std::exp(u[i] * (hi - lo) + lo), cfg.mamba.dt_init_floor);
    inv[i] = dt + std::log(-std::expm1(-dt));
  }
  return Tensor::from_vector(inv, {d_inner}, param_dtype);
}

}  // namespace

MambaMixer::MambaMixer(const ModelConfig& cfg, Generator& gen, LinearInit in_init,
                       LinearInit out_init, DType param_dtype)
    : d_model(cfg.d_model),
      d_inner(cfg.d_inner()),
      d_state(cfg.mamba.d_state),
      d_conv(cfg.mamba.d_conv),
      dt_rank(cfg.dt_rank()),
      selective(cfg.mamba.selective) {
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
  if (selective) {
    x_proj = register_module("x_proj", std::make_shared<Linear>(d_inner, dt_rank + 2 * d_state, false,
                                                                gen, in_init, param_dtype));
    // dt_proj weight ~ U(+-dt_scale * dt_rank^-0.5): Linear's default bound 1/sqrt(in) times dt_scale.
    dt_proj = register_module("dt_proj", std::make_shared<Linear>(dt_rank, d_inner, true, gen,
                                                                  LinearInit{0.0, cfg.mamba.dt_scale},
                                                                  param_dtype));
    Tensor dst = dt_proj->bias->var.value();
    dst.copy_(init_dt_bias(cfg, d_inner, gen, param_dtype));
  } else {
    // S4D's choices where they apply: B = 1, C ~ N(0, 1) (real, shared by the channels, as the
    // scan takes them), delta initialized as the selective block's.
    dt_bias = register_parameter("dt_bias", init_dt_bias(cfg, d_inner, gen, param_dtype), true);
    B = register_parameter("B", Tensor::ones({d_state}, param_dtype), true);
    C = register_parameter("C", init_normal({d_state}, 1.0, gen, param_dtype), true);
  }
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_inner, d_model, cfg.bias, gen,
                                                                  out_init, param_dtype));
}

int64_t MambaMixer::matmul_parameters() const {
  int64_t n = in_proj->weight->numel() + conv1d->weight->numel() + out_proj->weight->numel();
  if (selective) n += x_proj->weight->numel() + dt_proj->weight->numel();
  return n;
}

MambaState MambaMixer::zero_state(int64_t batch) const {
  const Device dev = device();
  MambaState s;
  s.conv = Tensor::zeros({batch, d_conv - 1, d_inner}, compute_dtype(), dev);
  s.ssm = Tensor::zeros({batch, d_inner, d_state}, dev.is_cuda() ? DType::f32 : compute_dtype(), dev);
  return s;
}

Variable kernel_param(const Parameter& p, const Variable& like) {
  if (like.device().is_cuda() && p.var.dtype() == DType::f32) return p.var;
  return p.compute(like.dtype());
}

MambaMixer::SsmParameters MambaMixer::ssm_parameters(const Variable& xs) const {
  const int64_t Bn = xs.size(0), L = xs.size(1);
  if (selective) {
    // x_proj takes xs itself (B, L, di), no reshape between them: its backward then adds its
    // gradient for xs into the scan's in the product (autograd::linear, backward_into).
    Variable x_dbl = x_proj->forward(xs);  // (B, L, dt_rank + 2 d_state)
    auto dbc = autograd::split(x_dbl, {dt_rank, d_state, d_state}, 2);
    return {dt_proj->forward_no_bias(dbc[0]), kernel_param(*dt_proj->bias, xs), dbc[1], dbc[2]};
  }
  // The scan takes B and C per position: the parameters added to zeros, which broadcasts them
  // (and sums their gradients back over batch and time).
  Variable zeros(Tensor::zeros({Bn, L, d_state}, xs.dtype(), xs.device()));
  return {Variable(Tensor::zeros({Bn, L, d_inner}, xs.dtype(), xs.device())), kernel_param(*dt_bias, xs),
          autograd::add(zeros, B->compute(xs.dtype())), autograd::add(zeros, C->compute(xs.dtype()))};
}

// The reference Mamba.forward, channel-last throughout: the conv and the scan read (B, L, di)
// as the linear layers produce it, so no transpose copies; in_proj writes x and z as two
// tensors (two products with the halves of its weight), so splitting xz copies nothing:
//   x, z = in_proj(x) (B, L, di) each; x = silu(conv1d(x));
//   dt, B, C = split(x_proj(x)); delta = dt @ dt_proj.weight^T (bias: the scan's delta_bias);
//   y = scan(x, delta, -exp(A_log), B, C, D, z, dt_proj.bias, softplus); out_proj(y).
// The context's documents reset the conv and the scan; its states enter and leave both.
Variable MambaMixer::forward(const Variable& x, const MixerContext& context) const {
  COIL_CHECK(x.dim() == 3 && x.size(2) == d_model, "MambaMixer: x must be [B, L, {}], got {}", d_model,
             describe(x.value()));
  auto xz = in_proj->forward_split(x, {d_inner, d_inner});  // x and z, (B, L, di) each
  const Variable& z = xz[1];
  Variable w = autograd::reshape(kernel_param(*conv1d->weight, xz[0]), {d_inner, d_conv});
  Variable cb = conv1d->bias ? kernel_param(*conv1d->bias, xz[0]) : Variable();
  const MambaState* initial = context.initial;
  Variable xs = autograd::conv1d(xz[0], w, cb, /*silu=*/true, context.seq_idx,
                                 initial && initial->conv.defined() ? Variable(initial->conv) : Variable(),
                                 context.final ? &context.final->conv : nullptr);  // (B, L, di)

  SsmParameters p = ssm_parameters(xs);
  autograd::ScanInputs in;
  in.u = xs;
  in.delta = p.delta;
  in.A = autograd::scale(autograd::exp(kernel_param(*A_log, xs)), -1.0);
  in.B = p.B;
  in.C = p.C;
  in.D = kernel_param(*D, xs);
  in.z = z;
  in.delta_bias = p.delta_bias;
  in.delta_softplus = true;
  in.seq_idx = context.seq_idx;
  if (initial && initial->ssm.defined()) in.initial_state = Variable(initial->ssm);
  autograd::ScanOutputs y = autograd::selective_scan(in);
  if (context.final) context.final->ssm = y.final_state.value();
  return out_proj->forward(y.out);  // (B, L, di) -> (B, L, d)
}

}  // namespace coil::layers
