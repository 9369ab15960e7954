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
// "model.attention.n_head"). Each key is described once, in visit_model_keys below: its path,
// its member (whose initializer is its one default) and its range; the config loader
// (train/config.cpp) reads and writes the section through it and validate() checks the same
// ranges. The choices (mixer, mlp, norm, positions, init, dtype) are enums, parsed once when
// a config loads. Adding a model option: docs/ARCHITECTURE.md, "Adding a model option".
#pragma once
#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace coil::layers {

// ---- typed choices: each enum's names are listed once, here ----

enum class MixerKind { mamba, attention };
enum class MlpKind { none, swiglu, gelu };
enum class NormKind { rmsnorm, layernorm };
enum class Positions { rope, learned, sinusoidal, none };
enum class InitScheme { mamba, gpt2 };
// The compute dtype a config asks for (model.dtype, train.dtype): automatic is bf16 on a GPU
// and f32 on the CPU; f64 is CPU-only, for gradient checks.
enum class ComputeDType { automatic, f32, bf16, f64 };

// Choices<E>::names: every value of E with the name configs use for it.
template <class E>
struct Choices;
template <>
struct Choices<MixerKind> {
  static constexpr std::array<std::pair<MixerKind, const char*>, 2> names{
      {{MixerKind::mamba, "mamba"}, {MixerKind::attention, "attention"}}};
};
template <>
struct Choices<MlpKind> {
  static constexpr std::array<std::pair<MlpKind, const char*>, 3> names{
      {{MlpKind::none, "none"}, {MlpKind::swiglu, "swiglu"}, {MlpKind::gelu, "gelu"}}};
};
template <>
struct Choices<NormKind> {
  static constexpr std::array<std::pair<NormKind, const char*>, 2> names{
      {{NormKind::rmsnorm, "rmsnorm"}, {NormKind::layernorm, "layernorm"}}};
};
template <>
struct Choices<Positions> {
  static constexpr std::array<std::pair<Positions, const char*>, 4> names{{{Positions::rope, "rope"},
                                                                           {Positions::learned, "learned"},
                                                                           {Positions::sinusoidal, "sinusoidal"},
                                                                           {Positions::none, "none"}}};
};
template <>
struct Choices<InitScheme> {
  static constexpr std::array<std::pair<InitScheme, const char*>, 2> names{
      {{InitScheme::mamba, "mamba"}, {InitScheme::gpt2, "gpt2"}}};
};
template <>
struct Choices<ComputeDType> {
  static constexpr std::array<std::pair<ComputeDType, const char*>, 4> names{
      {{ComputeDType::automatic, "auto"}, {ComputeDType::f32, "f32"}, {ComputeDType::bf16, "bf16"},
       {ComputeDType::f64, "f64"}}};
};

// The name of a choice ("swiglu").
template <class E>
const char* name(E value) {
  for (auto& [v, n] : Choices<E>::names)
    if (v == value) return n;
  return "?";
}
// The choice a name stands for; false when it names none.
template <class E>
bool parse_choice(const std::string& text, E& value) {
  for (auto& [v, n] : Choices<E>::names)
    if (text == n) {
      value = v;
      return true;
    }
  return false;
}
// Every name, joined ("none, swiglu, gelu").
template <class E>
std::string choice_names(const char* separator = ", ") {
  std::string out;
  for (auto& [v, n] : Choices<E>::names) out += (out.empty() ? "" : separator) + std::string(n);
  return out;
}

template <class E, class = void>
struct is_choice : std::false_type {};
template <class E>
struct is_choice<E, std::void_t<decltype(Choices<E>::names)>> : std::true_type {};

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
  Positions positions = Positions::rope;
  double rope_theta = 10000.0;
  int64_t max_seq_len = 2048;  // size of the learned position table; the longest sequence of
                               // learned positions (rope, sinusoidal and none take any length)
  int64_t window = 0;          // sliding-window size in tokens; 0 = full causal attention
};

struct ModelConfig {
  std::string name;  // preset name or free text; informational
  int64_t d_model = 768;
  int64_t n_layer = 24;
  int64_t vocab_size = 50277;
  int64_t pad_vocab_size_multiple = 8;

  MixerKind mixer = MixerKind::mamba;  // the mixer of every layer unless the two below say otherwise
  int64_t attention_every = 0;         // k > 0: layer i is attention when (i + 1) % k == 0
  std::vector<MixerKind> layers;       // explicit per-layer mixers; empty = use the two above

  MlpKind mlp = MlpKind::none;
  int64_t mlp_hidden = 0;  // 0 = family default
  int64_t mlp_multiple_of = 128;

  NormKind norm = NormKind::rmsnorm;
  double norm_eps = 1e-5;
  bool residual_in_fp32 = true;
  bool tie_embeddings = true;
  bool bias = false;
  double init_std = 0.02;
  bool rescale_prenorm_residual = true;
  InitScheme init = InitScheme::mamba;
  ComputeDType dtype = ComputeDType::automatic;

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
  int64_t mlp_hidden_size() const;
  // The mixer of each layer, resolved from `layers`, `attention_every` and `mixer`.
  std::vector<MixerKind> layer_mixers() const;
  bool has_attention() const;
  bool has_mamba() const;
  bool learned_positions() const { return attention.positions == Positions::learned && has_attention(); }
  // The fixed sinusoidal table of the original Transformer added to the token embeddings
  // (kernels/positions.h): no parameters, any length.
  bool sinusoidal_positions() const { return attention.positions == Positions::sinusoidal && has_attention(); }

  // Raises coil::Error naming the key path and the offending value(s): the ranges of
  // visit_model_keys, then the rules between keys.
  void validate() const;
  // The limits of the CUDA kernels, for a config that runs on a GPU: d_state up to
  // kernels::kScanMaxStateCuda for Mamba layers, the head dims of
  // kernels::attention_cuda_supports_head_dim for attention layers. Raises an error naming the
  // key and the limit. train/config.cpp checks it when a config loads with train.device cuda,
  // the trainer when train.device auto picks a GPU.
  void check_cuda_limits() const;

  static std::vector<std::string> preset_names();
  // Named presets. Mamba sizes follow the reference checkpoints (state-spaces/mamba-*);
  // Transformer++ is the Mamba paper's baseline (RoPE, SwiGLU, RMSNorm, no biases);
  // GPT-2 is the OpenAI architecture (learned positions, GELU MLP, LayerNorm, biases).
  static ModelConfig preset(const std::string& name);
};

// Every key of the `model:` section but model.preset (train/config.cpp applies it first), in
// the order a config is written out, each with its range. `keys` is called as
//   keys.integer(path, member, min)       an integer >= min
//   keys.positive(path, member)           a number > 0
//   keys.boolean(path, member)
//   keys.choice(path, member)             an enum, by the names of Choices<E>
//   keys.choice_list(path, member)        a list of them
// `M` is ModelConfig or const ModelConfig.
template <class M, class Keys>
void visit_model_keys(M& m, Keys& keys) {
  keys.integer("model.d_model", m.d_model, 1);
  keys.integer("model.n_layer", m.n_layer, 1);
  keys.integer("model.vocab_size", m.vocab_size, 1);
  keys.integer("model.pad_vocab_size_multiple", m.pad_vocab_size_multiple, 1);
  keys.choice("model.mixer", m.mixer);
  keys.integer("model.attention_every", m.attention_every, 0);
  keys.choice_list("model.layers", m.layers);
  keys.choice("model.mlp", m.mlp);
  keys.integer("model.mlp_hidden", m.mlp_hidden, 0);
  keys.integer("model.mlp_multiple_of", m.mlp_multiple_of, 1);
  keys.choice("model.norm", m.norm);
  keys.positive("model.norm_eps", m.norm_eps);
  keys.boolean("model.residual_in_fp32", m.residual_in_fp32);
  keys.boolean("model.tie_embeddings", m.tie_embeddings);
  keys.boolean("model.bias", m.bias);
  keys.positive("model.init_std", m.init_std);
  keys.boolean("model.rescale_prenorm_residual", m.rescale_prenorm_residual);
  keys.choice("model.init", m.init);
  keys.choice("model.dtype", m.dtype);
  keys.integer("model.mamba.d_state", m.mamba.d_state, 1);
  keys.integer("model.mamba.expand", m.mamba.expand, 1);
  keys.integer("model.mamba.d_conv", m.mamba.d_conv, 1);
  keys.integer("model.mamba.dt_rank", m.mamba.dt_rank, 0);
  keys.positive("model.mamba.dt_min", m.mamba.dt_min);
  keys.positive("model.mamba.dt_max", m.mamba.dt_max);
  keys.positive("model.mamba.dt_init_floor", m.mamba.dt_init_floor);
  keys.positive("model.mamba.dt_scale", m.mamba.dt_scale);
  keys.boolean("model.mamba.conv_bias", m.mamba.conv_bias);
  keys.boolean("model.mamba.selective", m.mamba.selective);
  keys.integer("model.attention.n_head", m.attention.n_head, 1);
  keys.choice("model.attention.positions", m.attention.positions);
  keys.positive("model.attention.rope_theta", m.attention.rope_theta);
  keys.integer("model.attention.max_seq_len", m.attention.max_seq_len, 1);
  keys.integer("model.attention.window", m.attention.window, 0);
}

}  // namespace coil::layers

// A choice formats as its name: fmt::format("{}", MlpKind::swiglu) is "swiglu".
template <class E>
struct fmt::formatter<E, char, std::enable_if_t<coil::layers::is_choice<E>::value>> : fmt::formatter<fmt::string_view> {
  template <class Context>
  auto format(E value, Context& ctx) const {
    return fmt::formatter<fmt::string_view>::format(coil::layers::name(value), ctx);
  }
};
