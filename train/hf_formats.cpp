#include "train/hf_formats.h"

#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "layers/model_facts.h"

namespace coil::train {
namespace {

using layers::MixerKind, layers::MlpKind, layers::ModelConfig, layers::NormKind, layers::Positions;

// Typed access to a config.json object; errors name the file and the key path.
class JsonConfig {
 public:
  JsonConfig(const nlohmann::json& j, std::string where, std::string path = "")
      : j_(j), where_(std::move(where)), path_(std::move(path)) {}

  bool has(const std::string& key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  std::string key_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }
  [[noreturn]] void bad(const std::string& key, const std::string& what) const {
    fail("{}: {}: {}", where_, key_path(key), what);
  }

  int64_t integer(const std::string& key) const {
    if (!has(key)) fail("{}: {} is missing", where_, key_path(key));
    const auto& v = j_.at(key);
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() && std::abs(v.get<double>()) < 9e18)
      return int64_t(v.get<double>());
    bad(key, "expected an integer, got " + v.dump());
  }
  int64_t integer(const std::string& key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }
  int64_t positive(const std::string& key) const {
    int64_t v = integer(key);
    if (v <= 0) bad(key, fmt::format("must be positive, got {}", v));
    return v;
  }
  double number(const std::string& key, double fallback) const {
    if (!has(key)) return fallback;
    if (!j_.at(key).is_number()) bad(key, "expected a number, got " + j_.at(key).dump());
    return j_.at(key).get<double>();
  }
  bool boolean(const std::string& key, bool fallback) const {
    if (!has(key)) return fallback;
    if (!j_.at(key).is_boolean()) bad(key, "expected true or false, got " + j_.at(key).dump());
    return j_.at(key).get<bool>();
  }
  bool boolean(const std::string& key, const char* why_required) const {
    if (!has(key)) fail("{}: {} is missing ({})", where_, key_path(key), why_required);
    return boolean(key, false);
  }
  std::string string(const std::string& key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    if (!j_.at(key).is_string()) bad(key, "expected a string, got " + j_.at(key).dump());
    return j_.at(key).get<std::string>();
  }
  // A nested object (empty when absent).
  JsonConfig object(const std::string& key) const {
    static const nlohmann::json empty = nlohmann::json::object();
    if (!has(key)) return JsonConfig(empty, where_, key_path(key));
    if (!j_.at(key).is_object()) bad(key, "expected an object, got " + j_.at(key).dump());
    return JsonConfig(j_.at(key), where_, key_path(key));
  }
  const nlohmann::json& json() const { return j_; }
  // Keys outside `known` are errors (for formats whose loader rejects them too).
  void only(std::initializer_list<const char*> known) const {
    for (auto& [key, value] : j_.items()) {
      bool ok = false;
      for (auto* k : known) ok |= key == k;
      if (!ok) {
        std::string list;
        for (auto* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        bad(key, fmt::format("is not a key coil knows here (known: {})", list));
      }
    }
  }
  // key must equal `want` (when present); `why` says what coil lacks.
  void require(const std::string& key, int64_t have, int64_t want, const std::string& why) const {
    if (have != want) bad(key, fmt::format("{} but must be {}: {}", have, want, why));
  }

 private:
  const nlohmann::json& j_;
  std::string where_, path_;
};

// Hugging Face vocabularies are not padded; coil keeps the size (pad 8 when it divides it).
int64_t pad_multiple_for(int64_t vocab) { return vocab % 8 == 0 ? 8 : 1; }

// mlp_hidden as coil writes it: 0 when the family default gives the same size.
int64_t mlp_hidden_key(ModelConfig c, int64_t hidden) {
  c.mlp_hidden = 0;
  return c.mlp_hidden_size() == hidden ? 0 : hidden;
}

int64_t default_dt_rank(int64_t d_model) { return (d_model + 15) / 16; }

// "auto" or an integer, as transformers' time_step_rank and mamba_ssm's dt_rank; coil's 0 = auto.
int64_t dt_rank_key(const JsonConfig& j, const std::string& key, int64_t d_model) {
  if (j.has(key) && j.json().at(key).is_string()) {
    if (j.string(key, "") != "auto") j.bad(key, "expected \"auto\" or an integer, got " + j.json().at(key).dump());
    return 0;
  }
  int64_t r = j.integer(key, 0);
  if (r < 0) j.bad(key, fmt::format("must be positive, got {}", r));
  return r == default_dt_rank(d_model) ? 0 : r;
}

ModelConfig base_config(layers::MixerKind mixer) {
  ModelConfig c;
  c.mixer = mixer;
  c.attention_every = 0;
  c.layers.clear();
  c.dtype = layers::ComputeDType::automatic;
  return c;
}

ModelConfig from_hf_mamba(const JsonConfig& j) {
  ModelConfig c = base_config(MixerKind::mamba);
  c.d_model = j.positive("hidden_size");
  c.n_layer = j.positive("num_hidden_layers");
  c.vocab_size = j.positive("vocab_size");
  c.pad_vocab_size_multiple = pad_multiple_for(c.vocab_size);
  c.mlp = MlpKind::none;
  c.norm = NormKind::rmsnorm;
  c.norm_eps = j.number("layer_norm_epsilon", 1e-5);
  c.residual_in_fp32 = j.boolean("residual_in_fp32", true);
  c.tie_embeddings = j.boolean("tie_word_embeddings", true);
  c.bias = j.boolean("use_bias", "its default differs between transformers versions");
  c.mamba.d_state = j.positive("state_size");
  c.mamba.expand = j.positive("expand");
  c.mamba.d_conv = j.positive("conv_kernel");
  c.mamba.dt_rank = dt_rank_key(j, "time_step_rank", c.d_model);
  c.mamba.conv_bias = j.boolean("use_conv_bias", true);
  c.mamba.dt_min = j.number("time_step_min", 0.001);
  c.mamba.dt_max = j.number("time_step_max", 0.1);
  c.mamba.dt_init_floor = j.number("time_step_floor", 1e-4);
  c.mamba.dt_scale = j.number("time_step_scale", 1.0);
  c.rescale_prenorm_residual = j.boolean("rescale_prenorm_residual", false);
  if (j.string("hidden_act", "silu") != "silu")
    j.bad("hidden_act", fmt::format("\"{}\", but coil's Mamba uses silu", j.string("hidden_act", "")));
  if (j.has("intermediate_size"))
    j.require("intermediate_size", j.integer("intermediate_size"), c.d_inner(), "coil's d_inner is expand * hidden_size");
  return c;
}

// rope_parameters (transformers 5), else the older rope_theta / rope_scaling.
double llama_rope_theta(const JsonConfig& j) {
  JsonConfig rope = j.has("rope_parameters") ? j.object("rope_parameters") : j.object("rope_scaling");
  std::string type = rope.string("rope_type", rope.string("type", "default"));
  if (type != "default") rope.bad("rope_type", fmt::format("\"{}\": coil's RoPE has no scaling (only \"default\")", type));
  if (rope.number("partial_rotary_factor", 1.0) != 1.0)
    rope.bad("partial_rotary_factor", "coil rotates the whole head dimension (1.0)");
  return rope.number("rope_theta", j.number("rope_theta", 10000.0));
}

ModelConfig from_hf_llama(const JsonConfig& j) {
  ModelConfig c = base_config(MixerKind::attention);
  c.d_model = j.positive("hidden_size");
  c.n_layer = j.positive("num_hidden_layers");
  c.vocab_size = j.positive("vocab_size");
  c.pad_vocab_size_multiple = pad_multiple_for(c.vocab_size);
  c.attention.n_head = j.positive("num_attention_heads");
  if (c.d_model % c.attention.n_head != 0)
    j.bad("num_attention_heads", fmt::format("{} does not divide hidden_size {}", c.attention.n_head, c.d_model));
  j.require("num_key_value_heads", j.integer("num_key_value_heads", c.attention.n_head), c.attention.n_head,
            "coil has no grouped-query attention (num_key_value_heads = num_attention_heads)");
  j.require("head_dim", j.integer("head_dim", c.head_dim()), c.head_dim(), "coil's head_dim is hidden_size / num_attention_heads");
  if (j.string("hidden_act", "silu") != "silu")
    j.bad("hidden_act", fmt::format("\"{}\", but coil's SwiGLU uses silu", j.string("hidden_act", "")));
  c.mlp = MlpKind::swiglu;
  c.mlp_hidden = mlp_hidden_key(c, j.positive("intermediate_size"));
  c.norm = NormKind::rmsnorm;
  c.norm_eps = j.number("rms_norm_eps", 1e-6);
  c.attention.positions = Positions::rope;
  c.attention.rope_theta = llama_rope_theta(j);
  c.attention.max_seq_len = j.integer("max_position_embeddings", 2048);
  c.tie_embeddings = j.boolean("tie_word_embeddings", false);
  bool attention_bias = j.boolean("attention_bias", false), mlp_bias = j.boolean("mlp_bias", false);
  if (attention_bias != mlp_bias)
    j.bad("mlp_bias", fmt::format("{} but attention_bias is {}: coil has one bias setting for every projection",
                                  mlp_bias, attention_bias));
  c.bias = attention_bias;
  c.init_std = j.number("initializer_range", 0.02);
  return c;
}

ModelConfig from_hf_gpt2(const JsonConfig& j) {
  ModelConfig c = base_config(MixerKind::attention);
  c.d_model = j.positive("n_embd");
  c.n_layer = j.positive("n_layer");
  c.vocab_size = j.positive("vocab_size");
  c.pad_vocab_size_multiple = pad_multiple_for(c.vocab_size);
  c.attention.n_head = j.positive("n_head");
  if (c.d_model % c.attention.n_head != 0)
    j.bad("n_head", fmt::format("{} does not divide n_embd {}", c.attention.n_head, c.d_model));
  c.attention.positions = Positions::learned;
  c.attention.max_seq_len = j.integer("n_positions", 1024);
  c.mlp = MlpKind::gelu;
  c.mlp_hidden = j.has("n_inner") ? mlp_hidden_key(c, j.positive("n_inner")) : 0;
  std::string act = j.string("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh" && act != "gelu_fast")
    j.bad("activation_function",
          fmt::format("\"{}\", but coil's GELU is the tanh form (gelu_new, gelu_pytorch_tanh, gelu_fast)", act));
  c.norm = NormKind::layernorm;
  c.norm_eps = j.number("layer_norm_epsilon", 1e-5);
  c.bias = true;
  c.tie_embeddings = j.boolean("tie_word_embeddings", true);
  c.init = layers::InitScheme::gpt2;
  c.init_std = j.number("initializer_range", 0.02);
  if (!j.boolean("scale_attn_weights", true)) j.bad("scale_attn_weights", "false, but coil scales by 1/sqrt(head_dim)");
  if (j.boolean("scale_attn_by_inverse_layer_idx", false))
    j.bad("scale_attn_by_inverse_layer_idx", "true, but coil has no per-layer attention scaling");
  if (j.boolean("add_cross_attention", false)) j.bad("add_cross_attention", "true, but coil has no cross-attention");
  return c;
}

// mamba_ssm's layers: attn_layer_idx as coil's attention_every (when it is that pattern) or layers.
void set_layer_pattern(ModelConfig& c, const std::vector<bool>& attention) {
  size_t n = 0, first = attention.size();
  for (size_t i = 0; i < attention.size(); ++i)
    if (attention[i]) n += 1, first = std::min(first, i);
  if (n == 0) return;
  if (n == attention.size()) {
    c.mixer = MixerKind::attention;
    return;
  }
  bool every = true;
  for (size_t i = 0; i < attention.size(); ++i) every &= attention[i] == ((i + 1) % (first + 1) == 0);
  if (every) {
    c.attention_every = int64_t(first + 1);
    return;
  }
  for (bool a : attention) c.layers.push_back(a ? MixerKind::attention : MixerKind::mamba);
}

ModelConfig from_mamba_ssm(const JsonConfig& j) {
  j.only({"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg", "rms_norm",
          "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"});
  ModelConfig c = base_config(MixerKind::mamba);
  c.d_model = j.positive("d_model");
  c.n_layer = j.positive("n_layer");
  c.vocab_size = j.positive("vocab_size");
  c.pad_vocab_size_multiple = j.integer("pad_vocab_size_multiple", 8);
  if (c.pad_vocab_size_multiple <= 0) j.bad("pad_vocab_size_multiple", "must be positive");
  c.norm = j.boolean("rms_norm", true) ? NormKind::rmsnorm : NormKind::layernorm;
  c.norm_eps = 1e-5;  // mamba_ssm's fixed norm_epsilon
  c.residual_in_fp32 = j.boolean("residual_in_fp32", true);
  c.tie_embeddings = j.boolean("tie_embeddings", true);

  std::vector<bool> attention(size_t(c.n_layer), false);
  if (j.has("attn_layer_idx")) {
    if (!j.json().at("attn_layer_idx").is_array()) j.bad("attn_layer_idx", "expected a list of layer numbers");
    for (auto& v : j.json().at("attn_layer_idx")) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= c.n_layer)
        j.bad("attn_layer_idx", fmt::format("{} is not a layer number in [0, {})", v.dump(), c.n_layer));
      attention[size_t(v.get<int64_t>())] = true;
    }
  }
  set_layer_pattern(c, attention);

  // Bias: coil has one setting; each part of mamba_ssm has its own.
  std::vector<std::pair<std::string, bool>> biases;
  JsonConfig ssm = j.object("ssm_cfg");
  ssm.only({"layer", "d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init", "dt_scale", "dt_init_floor",
            "conv_bias", "bias", "use_fast_path"});
  if (ssm.string("layer", "Mamba1") != "Mamba1")
    ssm.bad("layer", fmt::format("\"{}\", but coil's Mamba is Mamba1", ssm.string("layer", "")));
  c.mamba.d_state = ssm.integer("d_state", 16);
  c.mamba.d_conv = ssm.integer("d_conv", 4);
  c.mamba.expand = ssm.integer("expand", 2);
  c.mamba.dt_rank = dt_rank_key(ssm, "dt_rank", c.d_model);
  c.mamba.dt_min = ssm.number("dt_min", 0.001);
  c.mamba.dt_max = ssm.number("dt_max", 0.1);
  c.mamba.dt_scale = ssm.number("dt_scale", 1.0);
  c.mamba.dt_init_floor = ssm.number("dt_init_floor", 1e-4);
  c.mamba.conv_bias = ssm.boolean("conv_bias", true);
  if (c.has_mamba()) biases.emplace_back("ssm_cfg.bias", ssm.boolean("bias", false));

  if (c.has_attention()) {
    JsonConfig attn = j.object("attn_cfg");
    attn.only({"num_heads", "num_heads_kv", "head_dim", "mlp_dim", "qkv_proj_bias", "out_proj_bias", "softmax_scale",
               "causal", "d_conv", "rotary_emb_dim", "rotary_emb_base", "rotary_emb_interleaved"});
    c.attention.n_head = attn.positive("num_heads");
    if (c.d_model % c.attention.n_head != 0)
      attn.bad("num_heads", fmt::format("{} does not divide d_model {}", c.attention.n_head, c.d_model));
    attn.require("num_heads_kv", attn.integer("num_heads_kv", c.attention.n_head), c.attention.n_head,
                 "coil has no grouped-query attention");
    attn.require("head_dim", attn.integer("head_dim", c.head_dim()), c.head_dim(), "coil's head_dim is d_model / num_heads");
    attn.require("mlp_dim", attn.integer("mlp_dim", 0), 0, "coil's attention has no fused MLP");
    attn.require("d_conv", attn.integer("d_conv", 0), 0, "coil's attention has no convolution");
    if (!attn.boolean("causal", false)) attn.bad("causal", "false (mamba_ssm's default), but coil's attention is causal");
    if (attn.has("softmax_scale") &&
        std::abs(attn.number("softmax_scale", 0) - 1.0 / std::sqrt(double(c.head_dim()))) > 1e-6)
      attn.bad("softmax_scale", "coil scales by 1/sqrt(head_dim)");
    int64_t rotary = attn.integer("rotary_emb_dim", 0);
    if (rotary != 0 && rotary != c.head_dim())
      attn.bad("rotary_emb_dim", fmt::format("{}: coil rotates no dimension (0) or all of head_dim {}", rotary, c.head_dim()));
    if (attn.boolean("rotary_emb_interleaved", false))
      attn.bad("rotary_emb_interleaved", "true, but coil's RoPE is half-split (GPT-NeoX)");
    c.attention.positions = rotary ? Positions::rope : Positions::none;
    c.attention.rope_theta = attn.number("rotary_emb_base", 10000.0);
    biases.emplace_back("attn_cfg.qkv_proj_bias", attn.boolean("qkv_proj_bias", true));
    biases.emplace_back("attn_cfg.out_proj_bias", attn.boolean("out_proj_bias", true));
  }
  int64_t d_intermediate = j.integer("d_intermediate", 0);
  if (d_intermediate < 0) j.bad("d_intermediate", "must be >= 0");
  if (d_intermediate > 0) {
    c.mlp = MlpKind::swiglu;
    c.mlp_multiple_of = 128;  // GatedMLP rounds the hidden size up to a multiple of 128
    c.mlp_hidden = mlp_hidden_key(c, (d_intermediate + 127) / 128 * 128);
    biases.emplace_back("GatedMLP's bias", false);
  }
  c.bias = biases.empty() ? false : biases[0].second;
  for (auto& [what, b] : biases)
    if (b != c.bias)
      j.bad(biases[0].first, fmt::format("{} but {} is {}: coil has one bias setting for every projection", c.bias,
                                         what, b));
  return c;
}

std::string describe_layers(const ModelConfig& c) {
  if (c.has_mamba() && c.has_attention()) return "a Mamba/attention hybrid";
  return c.has_mamba() ? "a Mamba model" : "an attention model";
}

// Errors for coil models a family cannot hold.
void check_exportable(Family f, const ModelConfig& c) {
  auto refuse = [&](const std::string& key, const std::string& what) {
    fail("export: {} cannot hold this model: {} ({})", family_name(f), key, what);
  };
  if (f == Family::mamba_ssm) {
    if (c.norm_eps != 1e-5) refuse("model.norm_eps", fmt::format("{}; mamba_ssm's norms use 1e-5", c.norm_eps));
    if (c.mlp == MlpKind::gelu) refuse("model.mlp", "gelu; mamba_ssm's MLP is the SwiGLU GatedMLP");
    if (c.mlp == MlpKind::swiglu && c.mlp_hidden_size() % 128 != 0)
      refuse("model.mlp_hidden", fmt::format("{}; GatedMLP rounds its size up to a multiple of 128", c.mlp_hidden_size()));
    if (c.mlp != MlpKind::none && c.bias) refuse("model.bias", "true; GatedMLP has no biases");
    if (c.learned_positions() || c.sinusoidal_positions())
      refuse("model.attention.positions",
             fmt::format("{}; mamba_ssm adds no positions to the embeddings (rope or none)", c.attention.positions));
    if (c.has_attention() && c.attention.window != 0)
      refuse("model.attention.window", "a sliding window; mamba_ssm's MHA attends to every earlier token");
    return;
  }
  if (f == Family::hf_mamba) {
    if (c.has_attention()) refuse("model.layers", describe_layers(c) + " has attention layers");
    if (c.mlp != MlpKind::none) refuse("model.mlp", fmt::format("{}; MambaForCausalLM has no MLP", c.mlp));
    if (c.norm != NormKind::rmsnorm) refuse("model.norm", fmt::format("{}; MambaForCausalLM uses RMSNorm", c.norm));
    return;
  }
  if (c.has_mamba()) refuse("model.layers", describe_layers(c) + " has Mamba layers");
  if (c.attention.window != 0) refuse("model.attention.window", "a sliding window; the model attends to every earlier token");
  if (f == Family::hf_llama) {
    if (c.mlp != MlpKind::swiglu) refuse("model.mlp", fmt::format("{}; Llama's MLP is SwiGLU", c.mlp));
    if (c.norm != NormKind::rmsnorm) refuse("model.norm", fmt::format("{}; Llama uses RMSNorm", c.norm));
    if (c.attention.positions != Positions::rope)
      refuse("model.attention.positions", fmt::format("{}; Llama uses RoPE", c.attention.positions));
  } else {
    if (c.mlp != MlpKind::gelu) refuse("model.mlp", fmt::format("{}; GPT-2's MLP is GELU", c.mlp));
    if (c.norm != NormKind::layernorm) refuse("model.norm", fmt::format("{}; GPT-2 uses LayerNorm", c.norm));
    if (c.attention.positions != Positions::learned)
      refuse("model.attention.positions", fmt::format("{}; GPT-2 learns a position table", c.attention.positions));
    if (!c.bias) refuse("model.bias", "false; GPT-2's projections all have biases");
  }
}

nlohmann::ordered_json id_or_null(int64_t id) { return id >= 0 ? nlohmann::ordered_json(id) : nlohmann::ordered_json(); }

nlohmann::ordered_json hf_mamba_json(const ModelConfig& c, int64_t eos) {
  nlohmann::ordered_json j;
  j["architectures"] = nlohmann::ordered_json::array({"MambaForCausalLM"});
  j["model_type"] = "mamba";
  j["vocab_size"] = c.padded_vocab_size();
  j["hidden_size"] = c.d_model;
  j["state_size"] = c.mamba.d_state;
  j["num_hidden_layers"] = c.n_layer;
  j["layer_norm_epsilon"] = c.norm_eps;
  j["expand"] = c.mamba.expand;
  j["conv_kernel"] = c.mamba.d_conv;
  j["intermediate_size"] = c.d_inner();
  j["use_bias"] = c.bias;
  j["use_conv_bias"] = c.mamba.conv_bias;
  j["hidden_act"] = "silu";
  j["initializer_range"] = c.init_std;
  j["residual_in_fp32"] = c.residual_in_fp32;
  j["time_step_rank"] = c.dt_rank();
  j["time_step_scale"] = c.mamba.dt_scale;
  j["time_step_min"] = c.mamba.dt_min;
  j["time_step_max"] = c.mamba.dt_max;
  j["time_step_init_scheme"] = "random";
  j["time_step_floor"] = c.mamba.dt_init_floor;
  // An initialization option only, written false: transformers 5.17 applies it in from_pretrained
  // (MambaPreTrainedModel._init_weights divides out_proj.weight by sqrt(n_layer) after loading),
  // which would scale the exported weights (scripts/check_hf_interop.py caught it).
  j["rescale_prenorm_residual"] = false;
  j["use_cache"] = true;
  j["use_mambapy"] = false;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["bos_token_id"] = id_or_null(eos);
  j["eos_token_id"] = id_or_null(eos);
  j["pad_token_id"] = id_or_null(eos);
  return j;
}

nlohmann::ordered_json hf_llama_json(const ModelConfig& c, int64_t eos) {
  nlohmann::ordered_json j;
  j["architectures"] = nlohmann::ordered_json::array({"LlamaForCausalLM"});
  j["model_type"] = "llama";
  j["vocab_size"] = c.padded_vocab_size();
  j["hidden_size"] = c.d_model;
  j["intermediate_size"] = c.mlp_hidden_size();
  j["num_hidden_layers"] = c.n_layer;
  j["num_attention_heads"] = c.attention.n_head;
  j["num_key_value_heads"] = c.attention.n_head;
  j["head_dim"] = c.head_dim();
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.attention.max_seq_len;
  j["initializer_range"] = c.init_std;
  j["rms_norm_eps"] = c.norm_eps;
  j["use_cache"] = true;
  j["pretraining_tp"] = 1;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", c.attention.rope_theta}};
  j["attention_bias"] = c.bias;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = c.bias;
  j["bos_token_id"] = nullptr;
  j["eos_token_id"] = id_or_null(eos);
  j["pad_token_id"] = nullptr;
  return j;
}

nlohmann::ordered_json hf_gpt2_json(const ModelConfig& c, int64_t eos) {
  nlohmann::ordered_json j;
  j["architectures"] = nlohmann::ordered_json::array({"GPT2LMHeadModel"});
  j["model_type"] = "gpt2";
  j["vocab_size"] = c.padded_vocab_size();
  j["n_positions"] = c.attention.max_seq_len;
  j["n_embd"] = c.d_model;
  j["n_layer"] = c.n_layer;
  j["n_head"] = c.attention.n_head;
  j["n_inner"] = c.mlp_hidden_size();
  j["activation_function"] = "gelu_new";
  j["resid_pdrop"] = 0.0;  // coil trains without dropout
  j["embd_pdrop"] = 0.0;
  j["attn_pdrop"] = 0.0;
  j["layer_norm_epsilon"] = c.norm_eps;
  j["initializer_range"] = c.init_std;
  j["scale_attn_weights"] = true;
  j["scale_attn_by_inverse_layer_idx"] = false;
  j["reorder_and_upcast_attn"] = false;
  j["use_cache"] = true;
  j["tie_word_embeddings"] = c.tie_embeddings;
  j["bos_token_id"] = id_or_null(eos);
  j["eos_token_id"] = id_or_null(eos);
  return j;
}

nlohmann::ordered_json mamba_ssm_json(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["d_model"] = c.d_model;
  j["d_intermediate"] = c.mlp == MlpKind::swiglu ? c.mlp_hidden_size() : 0;
  j["n_layer"] = c.n_layer;
  j["vocab_size"] = c.vocab_size;
  nlohmann::ordered_json ssm;
  ssm["layer"] = "Mamba1";
  ssm["d_state"] = c.mamba.d_state;
  ssm["d_conv"] = c.mamba.d_conv;
  ssm["expand"] = c.mamba.expand;
  ssm["dt_rank"] = c.dt_rank();
  ssm["dt_min"] = c.mamba.dt_min;
  ssm["dt_max"] = c.mamba.dt_max;
  ssm["dt_scale"] = c.mamba.dt_scale;
  ssm["dt_init_floor"] = c.mamba.dt_init_floor;
  ssm["conv_bias"] = c.mamba.conv_bias;
  ssm["bias"] = c.bias;
  j["ssm_cfg"] = ssm;
  j["attn_layer_idx"] = nlohmann::ordered_json::array();
  auto mixers = c.layer_mixers();
  for (size_t i = 0; i < mixers.size(); ++i)
    if (mixers[i] == MixerKind::attention) j["attn_layer_idx"].push_back(i);
  nlohmann::ordered_json attn = nlohmann::ordered_json::object();
  if (c.has_attention()) {
    attn["num_heads"] = c.attention.n_head;
    attn["head_dim"] = c.head_dim();
    attn["qkv_proj_bias"] = c.bias;
    attn["out_proj_bias"] = c.bias;
    attn["causal"] = true;
    attn["rotary_emb_dim"] = c.attention.positions == Positions::rope ? c.head_dim() : 0;
    attn["rotary_emb_base"] = c.attention.rope_theta;
    attn["rotary_emb_interleaved"] = false;
  }
  j["attn_cfg"] = attn;
  j["rms_norm"] = c.norm == NormKind::rmsnorm;
  j["residual_in_fp32"] = c.residual_in_fp32;
  j["fused_add_norm"] = true;
  j["pad_vocab_size_multiple"] = c.pad_vocab_size_multiple;
  j["tie_embeddings"] = c.tie_embeddings;
  return j;
}

// ---- tensor names ----

std::string base_prefix(Family f) {
  switch (f) {
    case Family::hf_mamba: return "backbone";
    case Family::hf_llama: return "model";
    case Family::hf_gpt2: return "transformer";
    default: return "";
  }
}

struct Rename {
  std::vector<std::string> names;
  bool transposed = false;
};

// The stored names of one coil parameter.
Rename stored_names(Family f, const std::string& coil) {
  if (f == Family::mamba_ssm) return {{coil}};
  if (f == Family::hf_mamba) return {{coil == "backbone.embedding.weight" ? "backbone.embeddings.weight" : coil}};
  const bool llama = f == Family::hf_llama;
  static const std::map<std::string, std::pair<std::string, std::string>> top = {
      {"backbone.embedding.weight", {"model.embed_tokens.weight", "transformer.wte.weight"}},
      {"backbone.pos_embedding.weight", {"", "transformer.wpe.weight"}},
      {"backbone.norm_f.weight", {"model.norm.weight", "transformer.ln_f.weight"}},
      {"backbone.norm_f.bias", {"", "transformer.ln_f.bias"}},
      {"lm_head.weight", {"lm_head.weight", "lm_head.weight"}},
  };
  auto t = top.find(coil);
  if (t != top.end()) return {{llama ? t->second.first : t->second.second}};
  const std::string layers = "backbone.layers.";
  COIL_CHECK(coil.rfind(layers, 0) == 0, "interop: no stored name for '{}'", coil);
  size_t dot = coil.find('.', layers.size());
  std::string i = coil.substr(layers.size(), dot - layers.size()), rest = coil.substr(dot + 1);
  size_t last = rest.rfind('.');
  std::string module = rest.substr(0, last), param = rest.substr(last + 1);  // "mixer.in_proj", "weight"
  if (llama) {
    std::string p = "model.layers." + i + ".";
    if (module == "norm") return {{p + "input_layernorm." + param}};
    if (module == "norm2") return {{p + "post_attention_layernorm." + param}};
    if (module == "mixer.in_proj")
      return {{p + "self_attn.q_proj." + param, p + "self_attn.k_proj." + param, p + "self_attn.v_proj." + param}};
    if (module == "mixer.out_proj") return {{p + "self_attn.o_proj." + param}};
    if (module == "mlp.fc1") return {{p + "mlp.up_proj." + param, p + "mlp.gate_proj." + param}};
    if (module == "mlp.fc2") return {{p + "mlp.down_proj." + param}};
  } else {
    std::string p = "transformer.h." + i + ".";
    bool matrix = param == "weight";  // Conv1D weights are stored (in, out)
    if (module == "norm") return {{p + "ln_1." + param}};
    if (module == "norm2") return {{p + "ln_2." + param}};
    if (module == "mixer.in_proj") return {{p + "attn.c_attn." + param}, matrix};
    if (module == "mixer.out_proj") return {{p + "attn.c_proj." + param}, matrix};
    if (module == "mlp.fc1") return {{p + "mlp.c_fc." + param}, matrix};
    if (module == "mlp.fc2") return {{p + "mlp.c_proj." + param}, matrix};
  }
  fail("interop: no stored name for '{}' in {}", coil, family_name(f));
}

// Buffers (not parameters) that some writers store: skipped on import.
bool is_buffer(const std::string& name) {
  auto ends = [&](const std::string& s) { return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0; };
  return ends(".attn.bias") || ends(".attn.masked_bias") || ends("rotary_emb.inv_freq");
}

Tensor transpose2d(const Tensor& t) {
  Tensor src = t.to(Device::cpu(), DType::f32);
  const int64_t rows = src.size(0), cols = src.size(1);
  Tensor out = Tensor::empty({cols, rows}, DType::f32);
  const float* a = src.data<float>();
  float* b = out.data<float>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) b[c * rows + r] = a[r * cols + c];
  return out;
}

Tensor concat_rows(const std::vector<Tensor>& pieces, const Shape& shape) {
  if (pieces.size() == 1) return pieces[0].reshape(shape);
  Tensor out = Tensor::empty(shape, DType::f32);
  int64_t row = 0;
  for (auto& p : pieces) {
    out.narrow0(row, row + p.size(0)).copy_(p);
    row += p.size(0);
  }
  return out;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

const char* family_name(Family f) {
  switch (f) {
    case Family::hf_mamba: return "MambaForCausalLM";
    case Family::hf_llama: return "LlamaForCausalLM";
    case Family::hf_gpt2: return "GPT2LMHeadModel";
    case Family::mamba_ssm: return "mamba_ssm MambaLMHeadModel";
  }
  return "?";
}

Family detect_family(const nlohmann::json& config, const std::string& where) {
  if (!config.is_object()) fail("{}: expected a JSON object", where);
  const char* known = "coil imports MambaForCausalLM, LlamaForCausalLM, GPT2LMHeadModel and mamba_ssm's MambaLMHeadModel";
  auto by_class = [](const std::string& name, Family& f) {
    if (name == "MambaForCausalLM") f = Family::hf_mamba;
    else if (name == "LlamaForCausalLM") f = Family::hf_llama;
    else if (name == "GPT2LMHeadModel") f = Family::hf_gpt2;
    else return false;
    return true;
  };
  Family f = Family::hf_mamba;
  if (config.contains("architectures") && !config["architectures"].is_null()) {
    const auto& a = config["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string())
      fail("{}: architectures must be a list of class names, got {}", where, a.dump());
    if (!by_class(a[0].get<std::string>(), f)) fail("{}: architectures {} is unknown: {}", where, a.dump(), known);
    return f;
  }
  if (config.contains("model_type") && config["model_type"].is_string()) {
    std::string t = config["model_type"].get<std::string>();
    if (t == "mamba") return Family::hf_mamba;
    if (t == "llama") return Family::hf_llama;
    if (t == "gpt2") return Family::hf_gpt2;
    fail("{}: model_type \"{}\" is unknown: {}", where, t, known);
  }
  if (config.contains("d_model") && config.contains("n_layer")) return Family::mamba_ssm;
  fail("{}: names no architecture (architectures or model_type) and is no mamba_ssm config (d_model, n_layer): {}",
       where, known);
}

layers::ModelConfig model_config_from_json(Family f, const nlohmann::json& config, const std::string& where) {
  JsonConfig j(config, where);
  ModelConfig c = f == Family::hf_mamba   ? from_hf_mamba(j)
                  : f == Family::hf_llama ? from_hf_llama(j)
                  : f == Family::hf_gpt2  ? from_hf_gpt2(j)
                                          : from_mamba_ssm(j);
  try {
    c.validate();
  } catch (const Error& e) {
    fail("{}: the model it describes is not valid for coil: {}", where, e.what());
  }
  return c;
}

Family hf_family_for(const layers::ModelConfig& c) {
  if (!c.has_attention()) return Family::hf_mamba;
  if (!c.has_mamba())
    return c.mlp == MlpKind::gelu || c.attention.positions == Positions::learned ? Family::hf_gpt2 : Family::hf_llama;
  fail("export: {} has no Hugging Face class (MambaForCausalLM, LlamaForCausalLM, GPT2LMHeadModel); "
       "--format mamba_ssm holds it",
       describe_layers(c));
}

nlohmann::ordered_json model_config_to_json(Family f, const layers::ModelConfig& c, int64_t eos, const std::string& dtype) {
  check_exportable(f, c);
  nlohmann::ordered_json j = f == Family::hf_mamba   ? hf_mamba_json(c, eos)
                             : f == Family::hf_llama ? hf_llama_json(c, eos)
                             : f == Family::hf_gpt2  ? hf_gpt2_json(c, eos)
                                                     : mamba_ssm_json(c);
  if (f != Family::mamba_ssm) j["dtype"] = dtype;
  return j;
}

std::vector<TensorLink> tensor_links(Family f, const layers::ModelConfig& config) {
  std::vector<TensorLink> links;
  for (auto& [name, shape] : layers::parameter_shapes(config)) {
    Rename r = stored_names(f, name);
    TensorLink link{name, shape, r.names, {}, r.transposed};
    for (size_t k = 0; k < r.names.size(); ++k) {
      Shape s = shape;
      s[0] /= int64_t(r.names.size());
      if (r.transposed) std::swap(s[0], s[1]);
      link.shapes.push_back(s);
    }
    links.push_back(std::move(link));
  }
  return links;
}

NamedTensors import_tensors(Family f, const layers::ModelConfig& config, const StoredTensors& stored) {
  const std::string prefix = base_prefix(f);
  std::map<std::string, std::string> canonical;  // name with the prefix -> stored name
  for (auto& n : stored.names) {
    bool prefixed = prefix.empty() || n.rfind(prefix + ".", 0) == 0 || n.rfind("lm_head.", 0) == 0;
    std::string c = prefixed ? n : prefix + "." + n;
    auto [it, fresh] = canonical.emplace(c, n);
    if (!fresh) fail("{}: holds both '{}' and '{}', the same tensor", stored.where, it->second, n);
  }
  std::set<std::string> used;
  auto fetch = [&](const std::string& name, const Shape& expected) {
    auto it = canonical.find(name);
    if (it == canonical.end())
      fail("{}: tensor '{}' is missing (a {} with this config.json has it)", stored.where, name, family_name(f));
    Shape s = stored.shape(it->second);
    if (s != expected)
      fail("{}: tensor '{}' has shape {} but config.json implies {}", stored.where, it->second, shape_str(s),
           shape_str(expected));
    used.insert(name);
    return stored.read(it->second);
  };
  NamedTensors out;
  for (auto& link : tensor_links(f, config)) {
    std::vector<Tensor> pieces;
    for (size_t k = 0; k < link.names.size(); ++k) {
      Tensor t = fetch(link.names[k], link.shapes[k]);
      pieces.push_back(link.transposed ? transpose2d(t) : t);
    }
    out.emplace_back(link.coil_name, concat_rows(pieces, link.coil_shape));
  }
  if (config.tie_embeddings && canonical.count("lm_head.weight")) {
    Tensor head = fetch("lm_head.weight", {config.padded_vocab_size(), config.d_model});
    if (!same_bits(head, out.front().second))  // the embedding comes first
      fail("{}: config.json ties the head to the embedding, but the stored lm_head.weight differs from it",
           stored.where);
  }
  std::vector<std::string> extra;
  for (auto& [c, n] : canonical)
    if (!used.count(c) && !is_buffer(n)) extra.push_back("'" + n + "'");
  if (!extra.empty()) {
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", " : "") + extra[i];
    fail("{}: holds {} tensor(s) that a {} with this config.json does not have: {}{}", stored.where, extra.size(),
         family_name(f), list, extra.size() > 5 ? ", ..." : "");
  }
  return out;
}

NamedTensors export_tensors(Family f, const layers::ModelConfig& config, const NamedTensors& params) {
  std::map<std::string, Tensor> by_name;
  for (auto& [name, t] : params) by_name[name] = t.to(Device::cpu(), DType::f32);
  NamedTensors out;
  for (auto& link : tensor_links(f, config)) {
    auto it = by_name.find(link.coil_name);
    COIL_CHECK(it != by_name.end(), "export: the checkpoint lacks parameter '{}'", link.coil_name);
    const Tensor& t = it->second;
    COIL_CHECK(t.shape() == link.coil_shape, "export: parameter '{}' has shape {} but its config implies {}",
               link.coil_name, shape_str(t.shape()), shape_str(link.coil_shape));
    int64_t rows = t.size(0) / int64_t(link.names.size());
    for (size_t k = 0; k < link.names.size(); ++k) {
      Tensor piece = t.narrow0(int64_t(k) * rows, int64_t(k + 1) * rows);
      out.emplace_back(link.names[k], link.transposed ? transpose2d(piece) : piece);
    }
  }
  if (f == Family::mamba_ssm && config.tie_embeddings) out.emplace_back("lm_head.weight", by_name.at("backbone.embedding.weight"));
  return out;
}

}  // namespace coil::train
