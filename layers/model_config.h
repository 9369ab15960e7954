// Every knob of the model families (Mamba, Transformer++, GPT-2, hybrids), with defaults, and
// the named presets. One struct describes the `model:` section of a run's YAML config:
//
//   model:
//     preset: mamba-130m          # optional: start from a preset, then override keys
//     d_model: 768
//     n_layer: 24
//     vocab_size: 50277           # padded up to a multiple of pad_vocab_size_multiple
//     pad_vocab_size_multiple: 8
//     mixer: mamba                # every layer: "mamba" | "attention"
//     attention_every: 0          # k > 0: layer i is attention when (i + 1) % k == 0, else `mixer`
//     layers: [mamba, attention]  # explicit per-layer list (length n_layer); wins over both above
//     mlp: none                   # "none" | "swiglu" | "gelu"
//     mlp_hidden: 0               # 0: family default (gelu 4*d; swiglu int(8*d/3) rounded up
//     mlp_multiple_of: 128        #    to a multiple of mlp_multiple_of, as the reference GatedMLP)
//     norm: rmsnorm               # "rmsnorm" | "layernorm"
//     norm_eps: 1.0e-5
//     residual_in_fp32: true
//     tie_embeddings: true
//     bias: false                 # biases of the Linear layers (in/out projections, MLP)
//     init_std: 0.02
//     rescale_prenorm_residual: true
//     init: mamba                 # "mamba": the reference's _init_weights (Linear weights PyTorch
//                                 #   default, embeddings N(0, init_std), residual out-projections
//                                 #   / sqrt(n_residuals_per_layer * n_layer)); "gpt2": every
//                                 #   Linear and embedding N(0, init_std), residual projections
//                                 #   N(0, init_std / sqrt(2 * n_layer)); biases zero in both
//     dtype: auto                 # compute dtype: auto (bf16 on CUDA, f32 on CPU) | f32 | bf16 | f64
//     mamba:     {d_state: 16, expand: 2, d_conv: 4, dt_rank: 0, dt_min: 0.001, dt_max: 0.1,
//                 dt_init_floor: 1.0e-4, dt_scale: 1.0, conv_bias: true, selective: true}
//     attention: {n_head: 12, positions: rope, rope_theta: 10000, max_seq_len: 2048, window: 0}
//
// Key paths in error messages use exactly these names ("model.mamba.d_state",
// "model.attention.n_head"), so a config parser can map keys one to one onto fields.
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace coil::layers {

struct MambaConfig {
  int64_t d_state = 16;
  int64_t expand = 2;
  int64_t d_conv = 4;
  int64_t dt_rank = 0;  // 0: ceil(d_model / 16)
  double dt_min = 0.001;
  double dt_max = 0.1;
  double dt_init_floor = 1e-4;
  double dt_scale = 1.0;  // dt_proj weight ~ U(+-dt_scale * dt_rank^-0.5), as the reference
  bool conv_bias = true;
  // false: the selection ablation, an S4D-style time-invariant SSM in the same block: delta,
  // B and C are learned parameters that do not depend on the input (docs/MODELS.md).
  bool selective = true;
};

struct AttentionConfig {
  int64_t n_head = 12;
  std::string positions = "rope";  // "rope" | "learned" | "none"
  double rope_theta = 10000.0;
  int64_t max_seq_len = 2048;  // size of the learned position table; the longest sequence
  int64_t window = 0;          // sliding-window size in tokens; 0 = full causal attention
};

struct ModelConfig {
  std::string name;  // preset name or free text; informational
  int64_t d_model = 768;
  int64_t n_layer = 24;
  int64_t vocab_size = 50277;
  int64_t pad_vocab_size_multiple = 8;

  std::string mixer = "mamba";      // the mixer of every layer unless the two below say otherwise
  int64_t attention_every = 0;      // k > 0: layer i is attention when (i + 1) % k == 0
  std::vector<std::string> layers;  // explicit per-layer mixers; empty = use the two above

  std::string mlp = "none";  // "none" | "swiglu" | "gelu"
  int64_t mlp_hidden = 0;    // 0 = family default
  int64_t mlp_multiple_of = 128;

  std::string norm = "rmsnorm";  // "rmsnorm" | "layernorm"
  double norm_eps = 1e-5;
  bool residual_in_fp32 = true;
  bool tie_embeddings = true;
  bool bias = false;
  double init_std = 0.02;
  bool rescale_prenorm_residual = true;
  std::string init = "mamba";  // "mamba" | "gpt2"
  std::string dtype = "auto";  // "auto" | "f32" | "bf16" | "f64" (f64: CPU only, for gradcheck)

  MambaConfig mamba;
  AttentionConfig attention;

  // ---- derived values ----
  int64_t padded_vocab_size() const {
    int64_t m = pad_vocab_size_multiple < 1 ? 1 : pad_vocab_size_multiple;
    return (vocab_size + m - 1) / m * m;
  }
  int64_t d_inner() const { return mamba.expand * d_model; }
  int64_t dt_rank() const { return mamba.dt_rank > 0 ? mamba.dt_rank : (d_model + 15) / 16; }
  int64_t head_dim() const { return attention.n_head > 0 ? d_model / attention.n_head : 0; }
  int64_t mlp_hidden_size() const {
    if (mlp_hidden > 0) return mlp_hidden;
    if (mlp == "gelu") return 4 * d_model;
    if (mlp == "swiglu") {
      int64_t h = 8 * d_model / 3;
      int64_t m = mlp_multiple_of < 1 ? 1 : mlp_multiple_of;
      return (h + m - 1) / m * m;
    }
    return 0;
  }
  // The mixer of each layer, resolved from `layers`, `attention_every` and `mixer`.
  std::vector<std::string> layer_mixers() const {
    if (!layers.empty()) return layers;
    std::vector<std::string> out;
    for (int64_t i = 0; i < n_layer; ++i)
      out.push_back(attention_every > 0 && (i + 1) % attention_every == 0 ? "attention" : mixer);
    return out;
  }
  bool has_attention() const {
    for (auto& m : layer_mixers())
      if (m == "attention") return true;
    return false;
  }
  bool has_mamba() const {
    for (auto& m : layer_mixers())
      if (m == "mamba") return true;
    return false;
  }

  // Raises coil::Error naming the key path and the offending value(s).
  void validate() const {
    auto positive = [](const char* key, int64_t v) {
      if (v <= 0) fail("model config: {} must be positive, got {}", key, v);
    };
    auto one_of = [](const char* key, const std::string& v, std::initializer_list<const char*> ok) {
      std::string list;
      for (auto* o : ok) {
        if (v == o) return;
        list += list.empty() ? "" : ", ";
        list += o;
      }
      fail("model config: {} must be one of {}, got \"{}\"", key, list, v);
    };
    positive("model.d_model", d_model);
    positive("model.n_layer", n_layer);
    positive("model.vocab_size", vocab_size);
    positive("model.pad_vocab_size_multiple", pad_vocab_size_multiple);
    one_of("model.mixer", mixer, {"mamba", "attention"});
    if (attention_every < 0)
      fail("model config: model.attention_every must be >= 0, got {}", attention_every);
    if (!layers.empty()) {
      if (int64_t(layers.size()) != n_layer)
        fail("model config: model.layers has {} entries but model.n_layer is {}", layers.size(),
             n_layer);
      for (size_t i = 0; i < layers.size(); ++i)
        if (layers[i] != "mamba" && layers[i] != "attention")
          fail("model config: model.layers[{}] must be \"mamba\" or \"attention\", got \"{}\"", i,
               layers[i]);
    }
    one_of("model.mlp", mlp, {"none", "swiglu", "gelu"});
    if (mlp_hidden < 0) fail("model config: model.mlp_hidden must be >= 0, got {}", mlp_hidden);
    positive("model.mlp_multiple_of", mlp_multiple_of);
    one_of("model.norm", norm, {"rmsnorm", "layernorm"});
    if (!(norm_eps > 0)) fail("model config: model.norm_eps must be positive, got {}", norm_eps);
    if (!(init_std > 0)) fail("model config: model.init_std must be positive, got {}", init_std);
    one_of("model.dtype", dtype, {"auto", "f32", "bf16", "f64"});
    one_of("model.init", init, {"mamba", "gpt2"});

    if (has_mamba()) {
      positive("model.mamba.d_state", mamba.d_state);
      positive("model.mamba.expand", mamba.expand);
      positive("model.mamba.d_conv", mamba.d_conv);
      if (mamba.dt_rank < 0)
        fail("model config: model.mamba.dt_rank must be >= 0 (0 = ceil(d_model/16)), got {}",
             mamba.dt_rank);
      if (!(mamba.dt_min > 0))
        fail("model config: model.mamba.dt_min must be positive, got {}", mamba.dt_min);
      if (!(mamba.dt_max >= mamba.dt_min))
        fail("model config: model.mamba.dt_max ({}) must be >= model.mamba.dt_min ({})",
             mamba.dt_max, mamba.dt_min);
      if (!(mamba.dt_init_floor > 0))
        fail("model config: model.mamba.dt_init_floor must be positive, got {}",
             mamba.dt_init_floor);
      if (!(mamba.dt_scale > 0))
        fail("model config: model.mamba.dt_scale must be positive, got {}", mamba.dt_scale);
    }
    one_of("model.attention.positions", attention.positions, {"rope", "learned", "none"});
    if (has_attention()) {
      positive("model.attention.n_head", attention.n_head);
      if (d_model % attention.n_head != 0)
        fail("model config: model.d_model ({}) is not divisible by model.attention.n_head ({})",
             d_model, attention.n_head);
      if (attention.positions == "rope" && head_dim() % 2 != 0)
        fail("model config: rope needs an even head dimension: model.d_model ({}) / "
             "model.attention.n_head ({}) = {}",
             d_model, attention.n_head, head_dim());
      if (!(attention.rope_theta > 0))
        fail("model config: model.attention.rope_theta must be positive, got {}",
             attention.rope_theta);
      if (attention.window < 0)
        fail("model config: model.attention.window must be >= 0 (0 = full), got {}",
             attention.window);
    }
    if (attention.positions == "learned" || has_attention())
      positive("model.attention.max_seq_len", attention.max_seq_len);
  }

  static std::vector<std::string> preset_names() {
    return {"mamba-130m",         "mamba-370m",         "mamba-790m",         "mamba-1.4b",
            "mamba-2.8b",         "transformer++-125m", "transformer++-350m", "transformer++-760m",
            "transformer++-1.3b", "gpt2-124m",          "gpt2-350m",          "gpt2-774m",
            "gpt2-1.5b",          "mamba-tiny",         "transformer++-tiny", "gpt2-tiny",
            "hybrid-tiny"};
  }

  // Named presets. Mamba sizes follow the reference checkpoints (state-spaces/mamba-*);
  // Transformer++ is the Mamba paper's baseline (RoPE, SwiGLU, RMSNorm, no biases);
  // GPT-2 is the OpenAI architecture (learned positions, GELU MLP, LayerNorm, biases).
  static ModelConfig preset(const std::string& name) {
    auto mamba_cfg = [](int64_t d, int64_t n) {
      ModelConfig c;
      c.d_model = d;
      c.n_layer = n;
      c.vocab_size = 50277;
      c.mixer = "mamba";
      c.mlp = "none";
      c.norm = "rmsnorm";
      c.bias = false;
      c.residual_in_fp32 = true;
      return c;
    };
    auto tpp_cfg = [](int64_t d, int64_t n, int64_t heads) {
      ModelConfig c;
      c.d_model = d;
      c.n_layer = n;
      c.vocab_size = 50277;
      c.mixer = "attention";
      c.mlp = "swiglu";
      c.norm = "rmsnorm";
      c.bias = false;
      c.attention.n_head = heads;
      c.attention.positions = "rope";
      c.attention.max_seq_len = 2048;
      return c;
    };
    auto gpt2_cfg = [](int64_t d, int64_t n, int64_t heads) {
      ModelConfig c;
      c.d_model = d;
      c.n_layer = n;
      c.vocab_size = 50257;
      c.mixer = "attention";
      c.mlp = "gelu";
      c.norm = "layernorm";
      c.bias = true;
      c.attention.n_head = heads;
      c.attention.positions = "learned";
      c.attention.max_seq_len = 1024;
      c.init = "gpt2";
      return c;
    };
    // Tiny models train in seconds on a CPU; head_dim 64 because the CUDA attention kernels
    // are built for head dims 64 and 128.
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
    if (name == "mamba-130m") c = mamba_cfg(768, 24);
    else if (name == "mamba-370m") c = mamba_cfg(1024, 48);
    else if (name == "mamba-790m") c = mamba_cfg(1536, 48);
    else if (name == "mamba-1.4b") c = mamba_cfg(2048, 48);
    else if (name == "mamba-2.8b") c = mamba_cfg(2560, 64);
    else if (name == "transformer++-125m") c = tpp_cfg(768, 12, 12);
    else if (name == "transformer++-350m") c = tpp_cfg(1024, 24, 16);
    else if (name == "transformer++-760m") c = tpp_cfg(1536, 24, 16);
    else if (name == "transformer++-1.3b") c = tpp_cfg(2048, 24, 32);
    else if (name == "gpt2-124m") c = gpt2_cfg(768, 12, 12);
    else if (name == "gpt2-350m") c = gpt2_cfg(1024, 24, 16);
    else if (name == "gpt2-774m") c = gpt2_cfg(1280, 36, 20);
    else if (name == "gpt2-1.5b") c = gpt2_cfg(1600, 48, 25);
    else if (name == "mamba-tiny") c = tiny(mamba_cfg(128, 2));
    else if (name == "transformer++-tiny") c = tiny(tpp_cfg(128, 2, 2));
    else if (name == "gpt2-tiny") c = tiny(gpt2_cfg(128, 2, 2));
    else if (name == "hybrid-tiny") {
      c = tiny(mamba_cfg(128, 4));
      c.n_layer = 4;
      c.attention_every = 2;  // mamba, attention, mamba, attention
      c.attention.positions = "rope";
      c.mlp = "swiglu";
    } else {
      std::string list;
      for (auto& n : preset_names()) list += (list.empty() ? "" : ", ") + n;
      fail("model config: unknown model.preset \"{}\" (known: {})", name, list);
    }
    c.name = name;
    return c;
  }
};

}  // namespace coil::layers
