#include "autograd/functions/attention.h"
#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "autograd/functions/rope.h"
#include "layers/mixer.h"

namespace coil::layers {

Attention::Attention(const ModelConfig& cfg, Generator& gen, LinearInit in_init, LinearInit out_init,
                     DType param_dtype)
    : d_model(cfg.d_model),
      n_head(cfg.attention.n_head),
      head_dim(cfg.head_dim()),
      window(cfg.attention.window),
      rope(cfg.attention.positions == Positions::rope),
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

// x [B, T, d] -> qkv [B, T, 3, H, hd] (one fused projection, a free reshape) -> RoPE on q and k
// -> causal flash attention -> [B, T, H, hd] = [B, T, d] -> out_proj.
Variable Attention::forward(const Variable& x, const MixerContext& context) const {
  COIL_CHECK(x.dim() == 3 && x.size(2) == d_model, "Attention: x must be [B, T, {}], got {}", d_model,
             describe(x.value()));
  int64_t B = x.size(0), T = x.size(1);
  Variable qkv = autograd::reshape(in_proj->forward(x), {B, T, 3, n_head, head_dim});
  if (rope) {
    kernels::RopeOptions ro;
    ro.base = rope_theta;
    qkv = autograd::rope(qkv, ro);
  }
  if (context.rotated_qkv) *context.rotated_qkv = qkv.value();
  kernels::AttentionOptions ao;
  ao.window = window;
  ao.seq_idx = context.seq_idx;
  Variable y = autograd::attention(qkv, ao);
  return out_proj->forward(autograd::reshape(y, {B, T, d_model}));
}

}  // namespace coil::layers
