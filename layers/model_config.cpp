#include "layers/model_config.h"

#include <fmt/format.h>

#include "core/error.h"
#include "kernels/attention.h"
#include "kernels/selective_scan.h"

namespace coil::layers {

int64_t ModelConfig::mlp_hidden_size() const {
  if (mlp_hidden > 0) return mlp_hidden;
  if (mlp == MlpKind::gelu) return 4 * d_model;
  if (mlp == MlpKind::swiglu) {
    int64_t h = 8 * d_model / 3;
    int64_t m = mlp_multiple_of < 1 ? 1 : mlp_multiple_of;
    return (h + m - 1) / m * m;
  }
  return 0;
}

std::vector<MixerKind> ModelConfig::layer_mixers() const {
  if (!layers.empty()) return layers;
  std::vector<MixerKind> out;
  for (int64_t i = 0; i < n_layer; ++i)
    out.push_back(attention_every > 0 && (i + 1) % attention_every == 0 ? MixerKind::attention : mixer);
  return out;
}

bool ModelConfig::has_attention() const {
  for (MixerKind m : layer_mixers())
    if (m == MixerKind::attention) return true;
  return false;
}

bool ModelConfig::has_mamba() const {
  for (MixerKind m : layer_mixers())
    if (m == MixerKind::mamba) return true;
  return false;
}

namespace {

// The ranges of visit_model_keys, checked on a config built in code (the config loader checks
// them as it reads; a choice is an enum, so it is always one).
struct RangeCheck {
  void integer(const char* path, int64_t v, int64_t min) const {
    if (v < min) fail("model config: {} must be >= {}, got {}", path, min, v);
  }
  void positive(const char* path, double v) const {
    if (!(v > 0)) fail("model config: {} must be positive, got {}", path, v);
  }
  void boolean(const char*, bool) const {}
  template <class E>
  void choice(const char*, E) const {}
  template <class E>
  void choice_list(const char*, const std::vector<E>&) const {}
};

}  // namespace

void ModelConfig::validate() const {
  RangeCheck check;
  visit_model_keys(*this, check);
  if (!layers.empty() && int64_t(layers.size()) != n_layer)
    fail("model config: model.layers has {} entries but model.n_layer is {}", layers.size(), n_layer);
  if (!(mamba.dt_max >= mamba.dt_min))
    fail("model config: model.mamba.dt_max ({}) must be >= model.mamba.dt_min ({})", mamba.dt_max, mamba.dt_min);
  if (has_attention()) {
    if (d_model % attention.n_head != 0)
      fail("model config: model.d_model ({}) is not divisible by model.attention.n_head ({})", d_model,
           attention.n_head);
    if (attention.positions == Positions::rope && head_dim() % 2 != 0)
      fail("model config: rope needs an even head dimension: model.d_model ({}) / model.attention.n_head ({}) = {}",
           d_model, attention.n_head, head_dim());
  }
}

void ModelConfig::check_cuda_limits() const {
  if (has_mamba() && mamba.d_state > kernels::kScanMaxStateCuda)
    fail("model config: model.mamba.d_state is {}, but the CUDA selective scan takes d_state up to {}: use "
         "model.mamba.d_state <= {} (or train.device cpu)",
         mamba.d_state, kernels::kScanMaxStateCuda, kernels::kScanMaxStateCuda);
  if (has_attention() && !kernels::attention_cuda_supports_head_dim(head_dim()))
    fail("model config: the head dim model.d_model / model.attention.n_head = {} / {} = {} is not one the CUDA "
         "attention kernels take ({}): change model.attention.n_head (or train.device cpu)",
         d_model, attention.n_head, head_dim(), kernels::attention_cuda_head_dims());
}

std::vector<std::string> ModelConfig::preset_names() {
  return {"mamba-130m",         "mamba-370m",         "mamba-790m",         "mamba-1.4b",
          "mamba-2.8b",         "transformer++-125m", "transformer++-350m", "transformer++-760m",
          "transformer++-1.3b", "gpt2-124m",          "gpt2-350m",          "gpt2-774m",
          "gpt2-1.5b",          "mamba-tiny",         "transformer++-tiny", "gpt2-tiny",
          "hybrid-tiny"};
}

ModelConfig ModelConfig::preset(const std::string& name) {
  // The three families, as the fields in which they differ; then a size of one.
  struct Family {
    int64_t vocab_size;
    MixerKind mixer;
    MlpKind mlp;
    NormKind norm;
    bool bias;
    Positions positions;
    int64_t max_seq_len;
    InitScheme init;
  };
  const Family mamba{50277, MixerKind::mamba, MlpKind::none, NormKind::rmsnorm, false, Positions::rope, 2048,
                     InitScheme::mamba};
  const Family transformer_pp{50277, MixerKind::attention, MlpKind::swiglu, NormKind::rmsnorm, false, Positions::rope,
                              2048, InitScheme::mamba};
  const Family gpt2{50257, MixerKind::attention, MlpKind::gelu, NormKind::layernorm, true, Positions::learned, 1024,
                    InitScheme::gpt2};
  auto sized = [](const Family& f, int64_t d, int64_t n, int64_t heads = AttentionConfig().n_head) {
    ModelConfig c;
    c.d_model = d;
    c.n_layer = n;
    c.vocab_size = f.vocab_size;
    c.mixer = f.mixer;
    c.mlp = f.mlp;
    c.norm = f.norm;
    c.bias = f.bias;
    c.attention.n_head = heads;
    c.attention.positions = f.positions;
    c.attention.max_seq_len = f.max_seq_len;
    c.init = f.init;
    return c;
  };
  // Tiny models train in seconds on a CPU; head_dim 64, one of the head dims the CUDA
  // attention kernels are built for (check_cuda_limits).
  auto tiny = [](ModelConfig c) {
    c.d_model = 128;
    c.n_layer = 2;
    c.vocab_size = 256;
    c.mamba.d_state = 8;
    c.attention.n_head = 2;
    c.attention.max_seq_len = 256;
    return c;
  };
  ModelConfig c;
  if (name == "mamba-130m") c = sized(mamba, 768, 24);
  else if (name == "mamba-370m") c = sized(mamba, 1024, 48);
  else if (name == "mamba-790m") c = sized(mamba, 1536, 48);
  else if (name == "mamba-1.4b") c = sized(mamba, 2048, 48);
  else if (name == "mamba-2.8b") c = sized(mamba, 2560, 64);
  else if (name == "transformer++-125m") c = sized(transformer_pp, 768, 12, 12);
  else if (name == "transformer++-350m") c = sized(transformer_pp, 1024, 24, 16);
  else if (name == "transformer++-760m") c = sized(transformer_pp, 1536, 24, 16);
  else if (name == "transformer++-1.3b") c = sized(transformer_pp, 2048, 24, 32);
  else if (name == "gpt2-124m") c = sized(gpt2, 768, 12, 12);
  else if (name == "gpt2-350m") c = sized(gpt2, 1024, 24, 16);
  else if (name == "gpt2-774m") c = sized(gpt2, 1280, 36, 20);
  else if (name == "gpt2-1.5b") c = sized(gpt2, 1600, 48, 25);
  else if (name == "mamba-tiny") c = tiny(sized(mamba, 128, 2));
  else if (name == "transformer++-tiny") c = tiny(sized(transformer_pp, 128, 2, 2));
  else if (name == "gpt2-tiny") c = tiny(sized(gpt2, 128, 2, 2));
  else if (name == "hybrid-tiny") {
    c = tiny(sized(mamba, 128, 4));
    c.n_layer = 4;
    c.attention_every = 2;  // mamba, attention, mamba, attention
    c.attention.positions = Positions::rope;
    c.mlp = MlpKind::swiglu;
  } else {
    std::string list;
    for (auto& n : preset_names()) list += (list.empty() ? "" : ", ") + n;
    fail("model config: unknown model.preset \"{}\" (known: {})", name, list);
  }
  c.name = name;
  return c;
}

}  // namespace coil::layers
