// Import and export of Hugging Face and mamba_ssm models (train/hf_formats.h, train/hf_interop.h):
// the name and layout mappings, exact round trips, and bad input.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "autograd/engine.h"
#include "data/hdf5_util.h"
#include "data/token_file.h"
#include "layers/model.h"
#include "tests/catch.h"
#include "tests/files.h"
#include "tests/util.h"
#include "train/config.h"
#include "train/hf_interop.h"
#include "train/safetensors.h"
#include "train/trainer.h"

using namespace coil;
using namespace coil::train;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

// A small model of a preset's architecture (fast on the CPU): d_model 32, 2 heads of 16,
// d_state 4, a vocabulary of 37 padded to 40.
Config small(const std::string& preset, std::vector<std::string> extra = {}) {
  std::vector<std::string> sets = {"model.preset=" + preset, "model.d_model=32", "model.vocab_size=37",
                                   "model.attention.n_head=2", "model.mamba.d_state=4",
                                   "model.attention.max_seq_len=16", "data.task=random", "train.seq_len=16",
                                   "train.device=cpu"};
  for (auto& e : extra) sets.push_back(e);
  return parse_config("", preset + ".yaml", sets);
}

NamedTensors parameters_of(const layers::LanguageModel& model) {
  NamedTensors out;
  for (auto& [name, p] : model.named_parameters()) out.emplace_back(name, p->value());
  return out;
}

Tensor find(const NamedTensors& ts, const std::string& name) {
  for (auto& [n, t] : ts)
    if (n == name) return t;
  FAIL("no tensor " << name);
  return {};
}

// A model's checkpoint as the trainer writes it (parameters, config, tied-head alias).
std::string write_model(const fs::path& dir, const Config& config, const layers::LanguageModel& model) {
  Checkpoint c;
  c.state.step = 7;
  c.state.config_yaml = to_yaml(config);
  c.params = parameters_of(model);
  if (config.model.config.tie_embeddings) c.aliases.emplace_back("lm_head.weight", "backbone.embedding.weight");
  std::string path = (dir / "model.h5").string();
  write_checkpoint(path, c);
  return path;
}

// Mean loss of a few fixed tokens.
double loss_of(const layers::LanguageModel& model) {
  autograd::NoGradGuard no_grad;
  std::vector<int64_t> ids = {1, 5, 9, 2, 33, 7, 7, 0, 12, 36, 4, 4, 3, 20, 31, 8, 6};
  Tensor tokens = Tensor::from_vector(std::vector<int64_t>(ids.begin(), ids.end() - 1), {2, 8});
  Tensor targets = Tensor::from_vector(std::vector<int64_t>(ids.begin() + 1, ids.end()), {2, 8});
  return model.loss(tokens, targets).value().item();
}

Tensor transposed(const Tensor& t) {
  Tensor out = Tensor::empty({t.size(1), t.size(0)});
  for (int64_t r = 0; r < t.size(0); ++r)
    for (int64_t c = 0; c < t.size(1); ++c) out.data<float>()[c * t.size(0) + r] = t.data<float>()[r * t.size(1) + c];
  return out;
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(test::read_text(p)); }
void write_json(const fs::path& p, const nlohmann::json& j) { test::write_text(p, j.dump(2)); }

// An exported Transformer++ as a Hugging Face Llama directory, for the bad-input cases.
fs::path llama_dir(const std::string& name) {
  fs::path dir = test::fresh_dir("coil_test_interop", name);
  Config config = small("transformer++-tiny", {"model.tie_embeddings=false"});
  layers::LanguageModel model(config.model.config, 1);
  export_model(write_model(dir, config, model), "hf", (dir / "hf").string(), "f32");
  return dir / "hf";
}

void rewrite_weights(const fs::path& dir, const std::function<void(NamedTensors&)>& edit) {
  NamedTensors ts = read_safetensors((dir / "model.safetensors").string());
  edit(ts);
  write_safetensors((dir / "model.safetensors").string(), ts, "F32", {{"format", "pt"}});
}

}  // namespace

TEST_CASE("interop: stored names and layouts of the four families", "[interop]") {
  SECTION("LlamaForCausalLM: q, k, v rows of in_proj; up then gate rows of fc1; an untied head") {
    Config config = small("transformer++-tiny", {"model.tie_embeddings=false"});
    layers::LanguageModel model(config.model.config, 3);
    NamedTensors params = parameters_of(model), st = export_tensors(Family::hf_llama, config.model.config, params);
    const int64_t d = 32, h = config.model.config.mlp_hidden_size();
    Tensor in_proj = find(params, "backbone.layers.1.mixer.in_proj.weight");
    REQUIRE(test::bitwise_equal(find(st, "model.layers.1.self_attn.q_proj.weight"), in_proj.narrow0(0, d).clone()));
    REQUIRE(test::bitwise_equal(find(st, "model.layers.1.self_attn.k_proj.weight"), in_proj.narrow0(d, 2 * d).clone()));
    REQUIRE(test::bitwise_equal(find(st, "model.layers.1.self_attn.v_proj.weight"), in_proj.narrow0(2 * d, 3 * d).clone()));
    Tensor fc1 = find(params, "backbone.layers.0.mlp.fc1.weight");
    REQUIRE(test::bitwise_equal(find(st, "model.layers.0.mlp.up_proj.weight"), fc1.narrow0(0, h).clone()));
    REQUIRE(test::bitwise_equal(find(st, "model.layers.0.mlp.gate_proj.weight"), fc1.narrow0(h, 2 * h).clone()));
    for (const char* n : {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                          "model.layers.0.post_attention_layernorm.weight", "model.layers.0.self_attn.o_proj.weight",
                          "model.layers.0.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"})
      REQUIRE(find(st, n).defined());
    REQUIRE(st.size() == 3 + 2 * 9);

    // The SwiGLU order as Llama computes it: down(silu(gate x) * up x) is coil's MLP.
    Tensor x = test::random_normal({1, 3, d}, 4);
    Tensor ours = model.backbone->blocks[0]->mlp->forward(autograd::Variable(x)).value();
    Tensor up = find(st, "model.layers.0.mlp.up_proj.weight"), gate = find(st, "model.layers.0.mlp.gate_proj.weight");
    Tensor down = find(st, "model.layers.0.mlp.down_proj.weight");
    std::vector<double> hidden(static_cast<size_t>(h));
    for (int64_t t = 0; t < 3; ++t) {
      for (int64_t j = 0; j < h; ++j) {
        double g = 0, u = 0;
        for (int64_t i = 0; i < d; ++i) {
          g += double(gate.data<float>()[j * d + i]) * x.data<float>()[t * d + i];
          u += double(up.data<float>()[j * d + i]) * x.data<float>()[t * d + i];
        }
        hidden[size_t(j)] = g / (1 + std::exp(-g)) * u;
      }
      for (int64_t o = 0; o < d; ++o) {
        double y = 0;
        for (int64_t j = 0; j < h; ++j) y += double(down.data<float>()[o * h + j]) * hidden[size_t(j)];
        REQUIRE(ours.data<float>()[t * d + o] == Approx(y).margin(1e-5));
      }
    }
  }
  SECTION("GPT2LMHeadModel: Conv1D weights stored (in, out), c_attn = q, k, v; positions; no tied head") {
    Config config = small("gpt2-tiny");
    layers::LanguageModel model(config.model.config, 5);
    NamedTensors params = parameters_of(model), st = export_tensors(Family::hf_gpt2, config.model.config, params);
    Tensor c_attn = find(st, "transformer.h.1.attn.c_attn.weight");
    REQUIRE(c_attn.shape() == Shape{32, 96});
    REQUIRE(test::bitwise_equal(c_attn, transposed(find(params, "backbone.layers.1.mixer.in_proj.weight"))));
    REQUIRE(test::bitwise_equal(find(st, "transformer.h.0.mlp.c_fc.weight"),
                                transposed(find(params, "backbone.layers.0.mlp.fc1.weight"))));
    REQUIRE(find(st, "transformer.h.0.mlp.c_proj.weight").shape() == Shape{128, 32});
    REQUIRE(test::bitwise_equal(find(st, "transformer.wpe.weight"), find(params, "backbone.pos_embedding.weight")));
    REQUIRE(test::bitwise_equal(find(st, "transformer.h.0.ln_1.bias"), find(params, "backbone.layers.0.norm.bias")));
    REQUIRE(find(st, "transformer.ln_f.bias").defined());
    for (auto& [n, t] : st) REQUIRE(n != "lm_head.weight");
  }
  SECTION("MambaForCausalLM: backbone.embeddings, the rest under coil's (the reference's) names") {
    Config config = small("mamba-tiny");
    layers::LanguageModel model(config.model.config, 6);
    NamedTensors params = parameters_of(model), st = export_tensors(Family::hf_mamba, config.model.config, params);
    REQUIRE(st.size() == params.size());
    REQUIRE(test::bitwise_equal(find(st, "backbone.embeddings.weight"), find(params, "backbone.embedding.weight")));
    for (auto& [n, t] : params)
      if (n != "backbone.embedding.weight") REQUIRE(test::bitwise_equal(find(st, n), t));
  }
  SECTION("mamba_ssm: coil's names, the tied head under lm_head.weight too") {
    Config config = small("hybrid-tiny");
    layers::LanguageModel model(config.model.config, 7);
    NamedTensors params = parameters_of(model), st = export_tensors(Family::mamba_ssm, config.model.config, params);
    REQUIRE(st.size() == params.size() + 1);
    for (auto& [n, t] : params) REQUIRE(test::bitwise_equal(find(st, n), t));
    REQUIRE(test::bitwise_equal(find(st, "lm_head.weight"), find(params, "backbone.embedding.weight")));
  }
}

TEST_CASE("interop: config.json of published models maps to coil's presets", "[interop]") {
  auto from = [](const char* text) {
    nlohmann::json j = nlohmann::json::parse(text);
    return model_config_from_json(detect_family(j, "config.json"), j, "config.json");
  };
  // state-spaces/mamba-130m-hf
  layers::ModelConfig m = from(R"({"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 768,
      "num_hidden_layers": 24, "vocab_size": 50280, "state_size": 16, "expand": 2, "conv_kernel": 4,
      "time_step_rank": 48, "use_bias": false, "use_conv_bias": true, "layer_norm_epsilon": 1e-05,
      "residual_in_fp32": true, "intermediate_size": 1536, "hidden_act": "silu"})");
  REQUIRE(matching_preset(m) == "mamba-130m");
  REQUIRE(architecture(m) == architecture(layers::ModelConfig::preset("mamba-130m")));
  // state-spaces/mamba-130m (mamba_ssm)
  layers::ModelConfig s = from(R"({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {},
      "rms_norm": true, "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8})");
  REQUIRE(architecture(s) == architecture(layers::ModelConfig::preset("mamba-130m")));
  // openai-community/gpt2 (its vocabulary is not padded)
  layers::ModelConfig g = from(R"({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 768,
      "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257, "activation_function": "gelu_new",
      "layer_norm_epsilon": 1e-05, "n_inner": null})");
  REQUIRE(matching_preset(g) == "gpt2-124m");
  REQUIRE(g.padded_vocab_size() == 50257);
  // A Llama with transformers 5's rope_parameters.
  layers::ModelConfig l = from(R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 768, "num_hidden_layers": 12,
      "num_attention_heads": 12, "num_key_value_heads": 12, "intermediate_size": 2048, "vocab_size": 50280,
      "rms_norm_eps": 1e-05, "tie_word_embeddings": true, "max_position_embeddings": 2048,
      "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}})");
  REQUIRE(matching_preset(l) == "transformer++-125m");

  // Every tiny preset through its family's config.json and back keeps its architecture.
  std::vector<std::pair<std::string, Family>> cases = {{"mamba-tiny", Family::hf_mamba},
                                                       {"transformer++-tiny", Family::hf_llama},
                                                       {"gpt2-tiny", Family::hf_gpt2},
                                                       {"mamba-tiny", Family::mamba_ssm},
                                                       {"transformer++-tiny", Family::mamba_ssm},
                                                       {"hybrid-tiny", Family::mamba_ssm}};
  for (auto& [preset, family] : cases) {
    INFO(preset << " as " << family_name(family));
    layers::ModelConfig c = layers::ModelConfig::preset(preset);
    nlohmann::json j = nlohmann::json::parse(model_config_to_json(family, c, 256, "float32").dump());
    REQUIRE(detect_family(j, "config.json") == family);
    layers::ModelConfig back = model_config_from_json(family, j, "config.json");
    REQUIRE(architecture(back) == architecture(c));
    REQUIRE(matching_preset(back) == preset);
  }
  REQUIRE(hf_family_for(layers::ModelConfig::preset("gpt2-tiny")) == Family::hf_gpt2);
  REQUIRE_THROWS_WITH(hf_family_for(layers::ModelConfig::preset("hybrid-tiny")), Contains("--format mamba_ssm holds it"));
  REQUIRE_THROWS_WITH(model_config_to_json(Family::mamba_ssm, layers::ModelConfig::preset("gpt2-tiny"), -1, ""),
                      Contains("model.mlp (gelu; mamba_ssm's MLP is the SwiGLU GatedMLP)"));
  // Sinusoidal positions: no format holds them.
  for (const char* preset : {"transformer++-tiny", "gpt2-tiny", "hybrid-tiny"}) {
    INFO(preset);
    layers::ModelConfig c = layers::ModelConfig::preset(preset);
    c.attention.positions = layers::Positions::sinusoidal;
    const Family family = c.has_mamba() ? Family::mamba_ssm : hf_family_for(c);
    REQUIRE_THROWS_WITH(model_config_to_json(family, c, -1, ""), Contains("model.attention.positions (sinusoidal"));
  }
}

TEST_CASE("interop: export -> import is exact (weights bitwise, the same loss), bf16 rounds", "[interop]") {
  std::vector<std::pair<std::string, std::string>> cases = {{"mamba-tiny", "hf"},         {"transformer++-tiny", "hf"},
                                                            {"gpt2-tiny", "hf"},          {"mamba-tiny", "mamba_ssm"},
                                                            {"hybrid-tiny", "mamba_ssm"}, {"transformer++-tiny", "mamba_ssm"}};
  for (auto& [preset, format] : cases) {
    for (bool tied : {true, false}) {
      INFO(preset << " " << format << (tied ? " tied" : " untied"));
      fs::path dir = test::fresh_dir("coil_test_interop", "roundtrip");
      Config config = small(preset, {tied ? "model.tie_embeddings=true" : "model.tie_embeddings=false"});
      layers::LanguageModel model(config.model.config, 11);
      export_model(write_model(dir, config, model), format, (dir / "out").string(), "f32");
      import_model((dir / "out").string(), (dir / "back.h5").string());
      Checkpoint back = read_checkpoint((dir / "back.h5").string());
      Config imported = parse_config(back.state.config_yaml, "back.h5");
      REQUIRE(architecture(imported.model.config) == architecture(config.model.config));
      REQUIRE(back.params.size() == model.named_parameters().size());
      for (auto& [name, t] : back.params) REQUIRE(test::bitwise_equal(t, model.parameter(name)->value()));
      layers::LanguageModel again(imported.model.config, 99);
      layers::StateDict sd;
      for (auto& [name, t] : back.params) sd[name] = t;
      again.load_state_dict(sd);
      REQUIRE(loss_of(again) == loss_of(model));
    }
  }
  // bf16: each weight comes back as its bf16 rounding.
  fs::path dir = test::fresh_dir("coil_test_interop", "bf16");
  Config config = small("mamba-tiny");
  layers::LanguageModel model(config.model.config, 12);
  export_model(write_model(dir, config, model), "hf", (dir / "out").string(), "bf16");
  REQUIRE(read_json(dir / "out" / "config.json")["dtype"] == "bfloat16");
  import_model((dir / "out").string(), (dir / "back.h5").string());
  for (auto& [name, t] : read_checkpoint((dir / "back.h5").string()).params)
    REQUIRE(test::bitwise_equal(t, model.parameter(name)->value().to(DType::bf16).to(DType::f32)));
}

TEST_CASE("interop: coil import DIR writes a run config that starts from the weights", "[interop]") {
  fs::path dir = test::fresh_dir("coil_test_interop", "rundir");
  Config config = small("gpt2-tiny", {"model.d_model=128"});  // gpt2-tiny, vocabulary and positions apart
  layers::LanguageModel model(config.model.config, 13);
  export_model(write_model(dir, config, model), "hf", (dir / "hf").string(), "f32");
  std::string summary = import_model((dir / "hf").string(), (dir / "imported/").string());
  REQUIRE_THAT(summary, Contains("GPT2LMHeadModel") && Contains("coil preset gpt2-tiny"));
  Config run = load_config((dir / "imported" / "config.yaml").string());
  REQUIRE(run.model.preset == "gpt2-tiny");
  REQUIRE(run.run.name == "imported");
  REQUIRE(run.model.init_from == (dir / "imported" / "model.h5").string());
  NamedTensors w = initial_weights(run.model.init_from, run.model.config);
  for (auto& [name, t] : w) REQUIRE(test::bitwise_equal(t, model.parameter(name)->value()));
  // The run's model must be the source's.
  Config other = small("gpt2-tiny", {"model.d_model=128", "model.n_layer=3", "model.norm_eps=1e-6"});
  REQUIRE_THROWS_WITH(initial_weights((dir / "hf").string(), other.model.config),
                      Contains("model.n_layer: the run has 3, '" + (dir / "hf").string() + "' has 2") &&
                          Contains("model.norm_eps: the run has 1e-06") && Contains("`coil import"));
  // An existing directory is not overwritten.
  REQUIRE_THROWS_WITH(import_model((dir / "hf").string(), (dir / "imported").string()), Contains("exists"));
}

TEST_CASE("interop: a run starts from model.init_from; eval without a checkpoint evaluates it", "[interop]") {
  fs::path dir = test::fresh_dir("coil_test_interop", "init_from");
  Config source = small("mamba-tiny");
  layers::LanguageModel model(source.model.config, 21);
  std::string weights = write_model(dir, source, model);
  Config run = small("mamba-tiny", {"model.init_from=" + weights, "run.dir=" + (dir / "run").string(),
                                    "data.task=random", "train.seq_len=8", "train.micro_batch=2", "train.steps=1",
                                    "optim.lr=1e-12", "optim.min_lr=0", "optim.warmup=0", "eval.batches=1", "log.every=1"});
  EvalResult before = evaluate(run);
  REQUIRE(before.checkpoint == weights);
  TrainOptions o;
  o.quiet = true;
  o.install_signal_handlers = false;
  run_training(run, o);
  Checkpoint after;
  REQUIRE(load_latest((dir / "run").string(), after));
  for (auto& [name, t] : after.params) REQUIRE(test::max_abs_difference(t, model.parameter(name)->value()) < 1e-9);

  // A source of another shape is refused before the run directory is written.
  Config wrong = small("mamba-tiny", {"model.init_from=" + weights, "run.dir=" + (dir / "wrong").string(),
                                      "model.mamba.d_state=8"});
  REQUIRE_THROWS_WITH(run_training(wrong, o), Contains("model.mamba.d_state: the run has 8"));
  REQUIRE(!fs::exists(dir / "wrong"));
}

TEST_CASE("interop: bad model directories give errors naming the tensor or field, and write nothing",
          "[interop]") {
  auto refused = [](const fs::path& hf, const std::string& message) {
    fs::path out = hf.parent_path() / "out";
    INFO(message);
    REQUIRE_THROWS_WITH(import_model(hf.string(), out.string()), Contains(message));
    REQUIRE_THROWS_WITH(import_model(hf.string(), (hf.parent_path() / "out.h5").string()), Contains(message));
    REQUIRE(!fs::exists(out));
    REQUIRE(!fs::exists(hf.parent_path() / "out.h5"));
  };
  SECTION("a missing tensor") {
    fs::path hf = llama_dir("missing");
    rewrite_weights(hf, [](NamedTensors& ts) {
      ts.erase(std::remove_if(ts.begin(), ts.end(), [](auto& kv) { return kv.first == "model.layers.1.self_attn.k_proj.weight"; }),
               ts.end());
    });
    refused(hf, "tensor 'model.layers.1.self_attn.k_proj.weight' is missing");
  }
  SECTION("an extra tensor") {
    fs::path hf = llama_dir("extra");
    rewrite_weights(hf, [](NamedTensors& ts) { ts.emplace_back("model.layers.0.self_attn.q_norm.weight", Tensor::ones({16})); });
    refused(hf, "does not have: 'model.layers.0.self_attn.q_norm.weight'");
  }
  SECTION("a shape that config.json does not imply") {
    fs::path hf = llama_dir("shape");
    nlohmann::json j = read_json(hf / "config.json");
    j["intermediate_size"] = 96;
    write_json(hf / "config.json", j);
    refused(hf, "tensor 'model.layers.0.mlp.up_proj.weight' has shape [128, 32] but config.json implies [96, 32]");
  }
  SECTION("an unknown architecture, and settings coil cannot reproduce") {
    fs::path hf = llama_dir("unknown");
    nlohmann::json j = read_json(hf / "config.json");
    j["architectures"] = nlohmann::json::array({"BertForMaskedLM"});
    write_json(hf / "config.json", j);
    refused(hf, "architectures [\"BertForMaskedLM\"] is unknown");
    j = read_json(hf / "config.json");
    j["architectures"] = nlohmann::json::array({"LlamaForCausalLM"});
    j["num_key_value_heads"] = 1;
    write_json(hf / "config.json", j);
    refused(hf, "num_key_value_heads: 1 but must be 2: coil has no grouped-query attention");
    j["num_key_value_heads"] = 2;
    j["rope_parameters"] = {{"rope_type", "linear"}, {"factor", 2.0}};
    write_json(hf / "config.json", j);
    refused(hf, "rope_parameters.rope_type: \"linear\"");
    test::write_text(hf / "config.json", "{\"architectures\": [\"LlamaForCausalLM\"],");
    refused(hf, "config.json' is not valid JSON");
  }
  SECTION("a broken index of shards") {
    fs::path hf = llama_dir("index");
    NamedTensors ts = read_safetensors((hf / "model.safetensors").string());
    fs::remove(hf / "model.safetensors");
    NamedTensors first(ts.begin(), ts.begin() + 5), second(ts.begin() + 5, ts.end());
    write_safetensors((hf / "model-00001-of-00002.safetensors").string(), first, "F32", {{"format", "pt"}});
    write_safetensors((hf / "model-00002-of-00002.safetensors").string(), second, "F32", {{"format", "pt"}});
    nlohmann::json index;
    index["metadata"] = {{"total_size", 0}};
    for (auto& [n, t] : first) index["weight_map"][n] = "model-00001-of-00002.safetensors";
    for (auto& [n, t] : second) index["weight_map"][n] = "model-00002-of-00002.safetensors";
    write_json(hf / "model.safetensors.index.json", index);
    import_model(hf.string(), (hf.parent_path() / "sharded.h5").string());  // the good index imports

    nlohmann::json bad = index;
    bad["weight_map"][first[0].first] = "model-00003-of-00002.safetensors";
    write_json(hf / "model.safetensors.index.json", bad);
    refused(hf, "names shard 'model-00003-of-00002.safetensors'");
    bad = index;
    bad["weight_map"][first[0].first] = "model-00002-of-00002.safetensors";
    write_json(hf / "model.safetensors.index.json", bad);
    refused(hf, "puts '" + first[0].first + "' in 'model-00002-of-00002.safetensors', which does not hold it");
    bad = index;
    bad.erase("weight_map");
    write_json(hf / "model.safetensors.index.json", bad);
    refused(hf, "lacks the object \"weight_map\"");
  }
  SECTION("safetensors headers that run past the file") {
    fs::path hf = llama_dir("offsets");
    std::string bytes = test::read_text(hf / "model.safetensors");
    test::write_text(hf / "model.safetensors", bytes.substr(0, bytes.size() - 4));
    refused(hf, "past the end of the file");
    std::string huge = bytes;
    huge[5] = 1;  // a header length of 2^40 bytes
    test::write_text(hf / "model.safetensors", huge);
    refused(hf, "declares a header of");
  }
  SECTION("no weights, or a pickle") {
    fs::path hf = llama_dir("pickle");
    fs::rename(hf / "model.safetensors", hf / "pytorch_model.bin");
    refused(hf, "holds pytorch_model.bin, a pickle coil does not read; convert it to safetensors first");
  }
}

TEST_CASE("interop: Hugging Face files as published: names without the base prefix, mask buffers", "[interop]") {
  // openai-community/gpt2's model.safetensors: "h.0.attn.c_attn.weight", the causal-mask buffers
  // "h.{i}.attn.bias", no lm_head (tied).
  fs::path dir = test::fresh_dir("coil_test_interop", "published");
  Config config = small("gpt2-tiny");
  layers::LanguageModel model(config.model.config, 15);
  export_model(write_model(dir, config, model), "hf", (dir / "hf").string(), "f32");
  rewrite_weights(dir / "hf", [](NamedTensors& ts) {
    for (auto& [n, t] : ts) n = n.substr(std::string("transformer.").size());
    ts.emplace_back("h.0.attn.bias", Tensor::ones({1, 1, 16, 16}));
    ts.emplace_back("h.1.attn.masked_bias", Tensor::full({}, -1e4));
  });
  import_model((dir / "hf").string(), (dir / "back.h5").string());
  for (auto& [name, t] : read_checkpoint((dir / "back.h5").string()).params)
    REQUIRE(test::bitwise_equal(t, model.parameter(name)->value()));
}

TEST_CASE("interop: the tokenizer of the run's token files goes with hf and mamba_ssm exports", "[interop]") {
  fs::path dir = test::fresh_dir("coil_test_interop", "tokenizer");
  auto tokens = [&](const std::string& name, const std::string& tokenizer, int64_t vocab, int64_t eot) {
    std::string path = (dir / (name + ".h5")).string();
    data::TokenWriter w(path, vocab, tokenizer, eot);
    w.append(std::vector<uint32_t>{3, 4, 5, 6});
    w.close();
    return path;
  };
  std::string sp = tokens("sp", "sentencepiece-bpe-37-0123456789abcdef", 37, 1);
  {
    h5::Handle f = h5::open_file(sp, true);
    std::string model = "serialized \x01 model";
    h5::write_dataset(f, "tokenizer_model", H5T_NATIVE_UINT8, {model.size()}, model.data(), sp);
  }
  Config config = small("mamba-tiny", {"data.kind=tokens", "data.path=" + sp});
  layers::LanguageModel model(config.model.config, 16);
  std::string ckpt = write_model(dir, config, model);
  export_model(ckpt, "hf", (dir / "hf").string(), "f32");
  REQUIRE(test::read_text(dir / "hf" / "tokenizer.model") == "serialized \x01 model");
  nlohmann::json j = read_json(dir / "hf" / "config.json");
  REQUIRE(j["eos_token_id"] == 1);
  REQUIRE_THAT(j["coil_tokenizer"].get<std::string>(), Contains("SentencePiece model tokenizer.model"));
  REQUIRE(read_json(dir / "hf" / "generation_config.json")["eos_token_id"] == 1);
  export_model(ckpt, "mamba_ssm", (dir / "ssm").string(), "f32");
  REQUIRE(fs::exists(dir / "ssm" / "tokenizer.model"));
  REQUIRE(!read_json(dir / "ssm" / "config.json").contains("coil_tokenizer"));  // MambaConfig(**config) takes no other keys

  Config bytes = small("mamba-tiny", {"data.kind=tokens", "model.vocab_size=257",
                                      "data.path=" + tokens("bytes", "byte", 257, 256)});
  layers::LanguageModel byte_model(bytes.model.config, 17);
  export_model(write_model(dir, bytes, byte_model), "hf", (dir / "hf_bytes").string(), "f32");
  REQUIRE_THAT(read_json(dir / "hf_bytes" / "config.json")["coil_tokenizer"].get<std::string>(),
               Contains("ids 0-255 are the bytes of UTF-8 text, 256 is end-of-text"));
  REQUIRE(!fs::exists(dir / "hf_bytes" / "tokenizer.model"));

  // Token files that moved: the export goes on without a tokenizer and says so.
  Config moved = small("mamba-tiny", {"data.kind=tokens", "data.path=" + (dir / "gone.h5").string()});
  std::vector<std::string> said;
  export_model(write_model(dir, moved, model), "hf", (dir / "hf_moved").string(), "f32",
               [&](const std::string& s) { said.push_back(s); });
  REQUIRE_THAT(said.at(0), Contains("no tokenizer goes with the export"));
  REQUIRE(!read_json(dir / "hf_moved" / "config.json").contains("coil_tokenizer"));
}

TEST_CASE("interop: export refuses what a format cannot hold and keeps other directories", "[interop]") {
  fs::path dir = test::fresh_dir("coil_test_interop", "export_bad");
  Config config = small("gpt2-tiny");
  layers::LanguageModel model(config.model.config, 14);
  std::string ckpt = write_model(dir, config, model);
  REQUIRE_THROWS_WITH(export_model(ckpt, "mamba_ssm", (dir / "ssm").string(), "f32"), Contains("GatedMLP"));
  REQUIRE(!fs::exists(dir / "ssm"));
  REQUIRE_THROWS_WITH(export_model(ckpt, "onnx", (dir / "x").string(), "f32"), Contains("--format must be"));
  fs::create_directories(dir / "mine");
  test::write_text(dir / "mine" / "notes.txt", "keep");
  REQUIRE_THROWS_WITH(export_model(ckpt, "hf", (dir / "mine").string(), "f32"), Contains("is not an earlier export"));
  REQUIRE(test::read_text(dir / "mine" / "notes.txt") == "keep");
  export_model(ckpt, "hf", (dir / "hf").string(), "f32");
  export_model(ckpt, "hf", (dir / "hf").string(), "f32");  // an earlier export is replaced
  REQUIRE(read_json(dir / "hf" / "config.json")["architectures"][0] == "GPT2LMHeadModel");
  REQUIRE(default_export_path(ckpt, "hf") == (dir / "model-hf").string());
  REQUIRE(default_export_path(dir.string(), "mamba_ssm") == (dir / "mamba_ssm").string());
  REQUIRE(default_export_path(ckpt, "safetensors") == (dir / "model.safetensors").string());
}

TEST_CASE("safetensors: JSON strings keep non-ASCII text; bad headers are named", "[interop]") {
  fs::path dir = test::fresh_dir("coil_test_interop", "json");
  std::string path = (dir / "m.safetensors").string();
  write_safetensors(path, {{"w", Tensor::ones({2})}}, "F32", {{"note", "h\xc3\xa9llo \xe2\x9c\x93 \"q\"\n"}});
  SafetensorsReader r(path);
  REQUIRE(r.metadata().at(0).second == "h\xc3\xa9llo \xe2\x9c\x93 \"q\"\n");
  // \u escapes, a surrogate pair among them, decode to UTF-8; F16 widens to f32.
  std::string header = R"({"__metadata__":{"n":"\u00e9\ud83d\ude00"},"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})";
  while ((8 + header.size()) % 8) header += ' ';
  std::string file(8, '\0');
  file[0] = char(header.size());
  file += header + std::string("\x00\x3c\x00\xc0", 4);  // 1.0, -2.0
  test::write_text(dir / "h.safetensors", file);
  SafetensorsReader h((dir / "h.safetensors").string());
  REQUIRE(h.metadata().at(0).second == "\xc3\xa9\xf0\x9f\x98\x80");
  REQUIRE(h.read(h.entries()[0]).to_vector<float>() == std::vector<float>{1.0f, -2.0f});
  // Other dtypes are listed (a BOOL mask buffer, say) but not read.
  std::string mask = R"({"m":{"dtype":"BOOL","shape":[2,2],"data_offsets":[0,4]}})";
  while ((8 + mask.size()) % 8) mask += ' ';
  std::string maskfile(8, '\0');
  maskfile[0] = char(mask.size());
  test::write_text(dir / "mask.safetensors", maskfile + mask + std::string(4, '\1'));
  SafetensorsReader m((dir / "mask.safetensors").string());
  REQUIRE(m.entries().at(0).dtype == "BOOL");
  REQUIRE_THROWS_WITH(m.read(m.entries()[0]), Contains("tensor 'm' is BOOL, which coil does not read"));
  // Entries whose bytes do not match their shape are refused.
  std::string bad = R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})";
  std::string badfile(8, '\0');
  badfile[0] = char(bad.size());
  test::write_text(dir / "bad.safetensors", badfile + bad + std::string(8, '\0'));
  REQUIRE_THROWS_WITH(SafetensorsReader((dir / "bad.safetensors").string()),
                      Contains("tensor 'x': data_offsets [0, 8] hold 8 bytes but F32 of shape [3] needs 12"));
}
