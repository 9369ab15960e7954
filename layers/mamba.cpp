#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
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

Variable MambaMixer::forward(const Variable& x) const {
  fail("MambaMixer: the selective scan and conv1d ops are not available yet");
}

}  // namespace coil::layers
