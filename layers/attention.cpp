#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "layers/mixer.h"

namespace coil::layers {

Attention::Attention(const ModelConfig& cfg, Generator& gen, LinearInit in_init, LinearInit out_init,
                     DType param_dtype)
    : d_model(cfg.d_model),
      n_head(cfg.attention.n_head),
      head_dim(cfg.head_dim()),
      window(cfg.attention.window),
      rope(cfg.attention.positions == "rope"),
      rope_theta(cfg.attention.rope_theta) {
  COIL_CHECK(n_head > 0 && d_model % n_head == 0,
             "Attention: model.d_model ({}) is not divisible by model.attention.n_head ({})", d_model,
             n_head);
  in_proj = register_module("in_proj", std::make_shared<Linear>(d_model, 3 * d_model, cfg.bias, gen,
                                                                in_init, param_dtype));
  out_proj = register_module("out_proj", std::make_shared<Linear>(d_model, d_model, cfg.bias, gen,
                                                                  out_init, param_dtype));
}

int64_t Attention::matmul_parameters() const {
  return in_proj->weight->numel() + out_proj->weight->numel();
}

Variable Attention::forward(const Variable& x) const {
  fail("Attention: the attention and rope ops are not available yet");
}

}  // namespace coil::layers
