// Module system and model configs: names in the reference order, tied parameters, state dict
// round trips and their errors, weight-decay flags, presets, validation, parameter counts.
#include <set>

#include "layers/model.h"
#include "layers/model_config.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::layers;
using Catch::Matchers::Contains;

namespace {

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> out;
  for (auto& [n, p] : m.named_parameters()) out.push_back(n);
  return out;
}

}  // namespace

TEST_CASE("every preset validates and pads its vocabulary", "[config]") {
  for (auto& name : ModelConfig::preset_names()) {
    INFO(name);
    ModelConfig c = ModelConfig::preset(name);
    REQUIRE_NOTHROW(c.validate());
    REQUIRE(c.name == name);
    REQUIRE(c.padded_vocab_size() % c.pad_vocab_size_multiple == 0);
  }
  REQUIRE(ModelConfig::preset("mamba-130m").padded_vocab_size() == 50280);
  REQUIRE(ModelConfig::preset("gpt2-124m").padded_vocab_size() == 50264);
  REQUIRE(ModelConfig::preset("mamba-130m").dt_rank() == 48);
  REQUIRE(ModelConfig::preset("mamba-130m").d_inner() == 1536);
  REQUIRE(ModelConfig::preset("transformer++-125m").mlp_hidden_size() == 2048);
  REQUIRE(ModelConfig::preset("gpt2-124m").mlp_hidden_size() == 3072);
  auto h = ModelConfig::preset("hybrid-tiny").layer_mixers();
  REQUIRE(h == std::vector<MixerKind>{MixerKind::mamba, MixerKind::attention, MixerKind::mamba, MixerKind::attention});
  REQUIRE_THROWS_WITH(ModelConfig::preset("mamba-9b"), Contains("unknown model.preset \"mamba-9b\""));
}

TEST_CASE("bad configs name the key and the values", "[config]") {
  ModelConfig c = ModelConfig::preset("transformer++-125m");
  c.d_model = 770;
  REQUIRE_THROWS_WITH(c.validate(), Contains("model.d_model (770) is not divisible by model.attention.n_head (12)"));
  // The model's constructor validates too.
  REQUIRE_THROWS_WITH(LanguageModel(c), Contains("model.attention.n_head (12)"));

  c = ModelConfig::preset("mamba-tiny");
  c.layers = {MixerKind::mamba};
  REQUIRE_THROWS_WITH(c.validate(), Contains("model.layers has 1 entries but model.n_layer is 2"));
  c = ModelConfig::preset("mamba-tiny");
  c.mamba.dt_max = 1e-4;
  REQUIRE_THROWS_WITH(c.validate(), Contains("model.mamba.dt_max"));
  c = ModelConfig::preset("mamba-tiny");
  c.d_model = 0;
  REQUIRE_THROWS_WITH(c.validate(), Contains("model.d_model must be >= 1, got 0"));
  c = ModelConfig::preset("transformer++-tiny");
  c.d_model = 6;
  c.attention.n_head = 2;  // head_dim 3: odd, RoPE needs pairs
  REQUIRE_THROWS_WITH(c.validate(), Contains("rope needs an even head dimension"));
}

TEST_CASE("Mamba parameter names follow the reference state dict", "[module]") {
  LanguageModel m(ModelConfig::preset("mamba-tiny"), 1);
  auto names = names_of(m);
  std::vector<std::string> expect = {
      "backbone.embedding.weight",
      "backbone.layers.0.norm.weight",
      "backbone.layers.0.mixer.A_log",
      "backbone.layers.0.mixer.D",
      "backbone.layers.0.mixer.in_proj.weight",
      "backbone.layers.0.mixer.conv1d.weight",
      "backbone.layers.0.mixer.conv1d.bias",
      "backbone.layers.0.mixer.x_proj.weight",
      "backbone.layers.0.mixer.dt_proj.weight",
      "backbone.layers.0.mixer.dt_proj.bias",
      "backbone.layers.0.mixer.out_proj.weight",
      "backbone.layers.1.norm.weight",
  };
  REQUIRE(names.size() == 2 + 2 * 10);
  for (size_t i = 0; i < expect.size(); ++i) REQUIRE(names[i] == expect[i]);
  REQUIRE(names.back() == "backbone.norm_f.weight");

  // Shapes as the reference: conv1d.weight [d_inner, 1, d_conv], x_proj [dt_rank + 2N, d_inner].
  auto& c = m.config();
  REQUIRE(m.parameter("backbone.layers.0.mixer.conv1d.weight")->shape() == Shape{c.d_inner(), 1, 4});
  REQUIRE(m.parameter("backbone.layers.0.mixer.x_proj.weight")->shape() ==
          Shape{c.dt_rank() + 2 * c.mamba.d_state, c.d_inner()});
  REQUIRE(m.parameter("backbone.layers.0.mixer.in_proj.weight")->shape() == Shape{2 * c.d_inner(), c.d_model});
  REQUIRE(m.parameter("backbone.layers.0.mixer.A_log")->shape() == Shape{c.d_inner(), c.mamba.d_state});

  // Tied head: one Parameter under two names; named_parameters lists it once, state_dict twice.
  REQUIRE(m.parameter("lm_head.weight") == m.parameter("backbone.embedding.weight"));
  auto sd = m.state_dict();
  REQUIRE(sd.count("lm_head.weight") == 1);
  REQUIRE(sd.size() == names.size() + 1);
  REQUIRE(m.named_parameters_with_aliases().size() == names.size() + 1);
}

TEST_CASE("attention, MLP and GPT-2 parameter names", "[module]") {
  LanguageModel t(ModelConfig::preset("transformer++-tiny"), 1);
  auto names = names_of(t);
  std::vector<std::string> expect = {
      "backbone.embedding.weight",          "backbone.layers.0.norm.weight",
      "backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.out_proj.weight",
      "backbone.layers.0.norm2.weight",     "backbone.layers.0.mlp.fc1.weight",
      "backbone.layers.0.mlp.fc2.weight",
  };
  for (size_t i = 0; i < expect.size(); ++i) REQUIRE(names[i] == expect[i]);
  int64_t d = t.config().d_model, hidden = t.config().mlp_hidden_size();
  REQUIRE(t.parameter("backbone.layers.0.mixer.in_proj.weight")->shape() == Shape{3 * d, d});
  REQUIRE(t.parameter("backbone.layers.0.mlp.fc1.weight")->shape() == Shape{2 * hidden, d});

  LanguageModel g(ModelConfig::preset("gpt2-tiny"), 1);
  names = names_of(g);
  expect = {
      "backbone.embedding.weight",
      "backbone.pos_embedding.weight",
      "backbone.layers.0.norm.weight",
      "backbone.layers.0.norm.bias",
      "backbone.layers.0.mixer.in_proj.weight",
      "backbone.layers.0.mixer.in_proj.bias",
      "backbone.layers.0.mixer.out_proj.weight",
      "backbone.layers.0.mixer.out_proj.bias",
      "backbone.layers.0.norm2.weight",
      "backbone.layers.0.norm2.bias",
      "backbone.layers.0.mlp.fc1.weight",
      "backbone.layers.0.mlp.fc1.bias",
      "backbone.layers.0.mlp.fc2.weight",
      "backbone.layers.0.mlp.fc2.bias",
  };
  for (size_t i = 0; i < expect.size(); ++i) REQUIRE(names[i] == expect[i]);
  REQUIRE(names[names.size() - 2] == "backbone.norm_f.weight");
  REQUIRE(names.back() == "backbone.norm_f.bias");
  REQUIRE(g.parameter("backbone.pos_embedding.weight")->shape() == Shape{256, g.config().d_model});

  // Hybrid: the pattern picks the mixer.
  LanguageModel h(ModelConfig::preset("hybrid-tiny"), 1);
  auto hn = names_of(h);
  REQUIRE(std::count(hn.begin(), hn.end(), "backbone.layers.0.mixer.A_log") == 1);
  REQUIRE(std::count(hn.begin(), hn.end(), "backbone.layers.1.mixer.in_proj.weight") == 1);
  REQUIRE(std::count(hn.begin(), hn.end(), "backbone.layers.1.mixer.A_log") == 0);

  // Untied: lm_head.weight is its own parameter.
  ModelConfig c = ModelConfig::preset("mamba-tiny");
  c.tie_embeddings = false;
  LanguageModel u(c, 1);
  REQUIRE(names_of(u).back() == "lm_head.weight");
  REQUIRE(u.parameter("lm_head.weight") != u.parameter("backbone.embedding.weight"));
}

TEST_CASE("no_weight_decay marks biases, norms, A_log and D", "[module]") {
  LanguageModel m(ModelConfig::preset("hybrid-tiny"), 1);
  std::set<std::string> decayed;
  for (auto& [n, p] : m.named_parameters()) {
    bool expect_no_decay = n.find("bias") != std::string::npos || n.find("norm") != std::string::npos ||
                           n.find("A_log") != std::string::npos || (n.size() >= 2 && n.substr(n.size() - 2) == ".D");
    INFO(n);
    REQUIRE(p->no_weight_decay == expect_no_decay);
  }
  REQUIRE_FALSE(m.parameter("backbone.embedding.weight")->no_weight_decay);
}

TEST_CASE("state dict round trip and errors that name the parameter", "[module]") {
  ModelConfig c = ModelConfig::preset("hybrid-tiny");
  LanguageModel a(c, 1), b(c, 2);
  auto pa = a.parameter("backbone.layers.0.mixer.in_proj.weight")->value();
  auto pb = b.parameter("backbone.layers.0.mixer.in_proj.weight")->value();
  REQUIRE_FALSE(test::bitwise_equal(pa, pb));  // different seeds

  // Same seed: identical initialization.
  LanguageModel a2(c, 1);
  for (auto& [n, p] : a.named_parameters()) REQUIRE(test::bitwise_equal(p->value(), a2.parameter(n)->value()));

  b.load_state_dict(a.state_dict());
  for (auto& [n, p] : a.named_parameters()) {
    INFO(n);
    REQUIRE(test::bitwise_equal(p->value(), b.parameter(n)->value()));
  }
  // The load copies into the existing buffers: the Variables keep their identity.
  REQUIRE(b.parameter("backbone.layers.0.mixer.in_proj.weight")->value().same_buffer(pb));

  // Alias keys are optional.
  auto sd = a.state_dict();
  sd.erase("lm_head.weight");
  REQUIRE_NOTHROW(b.load_state_dict(sd));

  auto missing = a.state_dict();
  missing.erase("backbone.norm_f.weight");
  REQUIRE_THROWS_WITH(b.load_state_dict(missing), Contains("missing parameter \"backbone.norm_f.weight\""));
  REQUIRE_NOTHROW(b.load_state_dict(missing, /*strict=*/false));

  auto extra = a.state_dict();
  extra["backbone.layers.9.mixer.D"] = Tensor::ones({4});
  REQUIRE_THROWS_WITH(b.load_state_dict(extra), Contains("unexpected parameter \"backbone.layers.9.mixer.D\""));

  auto wrong = a.state_dict();
  wrong["backbone.layers.0.mixer.D"] = Tensor::ones({7});
  Tensor before = b.parameter("backbone.embedding.weight")->value().clone();
  REQUIRE_THROWS_WITH(b.load_state_dict(wrong),
                      Contains("shape mismatch for \"backbone.layers.0.mixer.D\": the model has [256], "
                               "the state dict has [7]"));
  // A failed load changes nothing.
  REQUIRE(test::bitwise_equal(before, b.parameter("backbone.embedding.weight")->value()));

  // dtype conversion on load (f64 values into f32 parameters).
  auto sd64 = a.state_dict();
  for (auto& [n, t] : sd64) t = t.to(DType::f64);
  REQUIRE_NOTHROW(b.load_state_dict(sd64));
  REQUIRE(b.parameter("backbone.norm_f.weight")->value().dtype() == DType::f32);
}

TEST_CASE("train/eval mode and named modules", "[module]") {
  LanguageModel m(ModelConfig::preset("mamba-tiny"), 0);
  REQUIRE(m.is_training());
  m.eval();
  for (auto& [n, mod] : m.named_modules()) {
    INFO(n);
    REQUIRE_FALSE(mod->is_training());
  }
  m.train();
  REQUIRE(m.backbone->blocks[1]->mixer->is_training());
  auto mods = m.named_modules();
  REQUIRE(mods[0].first.empty());
  bool found = false;
  for (auto& [n, mod] : mods) found |= n == "backbone.layers.1.mixer.dt_proj";
  REQUIRE(found);
  REQUIRE_THROWS_WITH(m.parameter("backbone.nope"), Contains("no parameter named \"backbone.nope\""));
}

TEST_CASE("Mamba initialization follows the reference", "[module]") {
  ModelConfig c = ModelConfig::preset("mamba-tiny");
  LanguageModel m(c, 3);
  auto A_log = m.parameter("backbone.layers.0.mixer.A_log")->value().to_vector<double>();
  for (int64_t n = 0; n < c.mamba.d_state; ++n) REQUIRE(A_log[size_t(n)] == Approx(std::log(double(n + 1))));
  for (double v : m.parameter("backbone.layers.0.mixer.D")->value().to_vector<double>()) REQUIRE(v == 1.0);
  // dt = softplus(bias) lies in [dt_min, dt_max].
  for (double b : m.parameter("backbone.layers.0.mixer.dt_proj.bias")->value().to_vector<double>()) {
    double dt = std::log1p(std::exp(b));
    REQUIRE(dt >= c.mamba.dt_min * 0.999);
    REQUIRE(dt <= c.mamba.dt_max * 1.001);
  }
  double bound = 1.0 / std::sqrt(double(c.dt_rank()));
  for (double w : m.parameter("backbone.layers.0.mixer.dt_proj.weight")->value().to_vector<double>())
    REQUIRE(std::abs(w) <= bound);
  // out_proj: U(+-1/sqrt(d_inner)) / sqrt(n_layer) (one residual per layer without an MLP).
  double out_bound = 1.0 / std::sqrt(double(c.d_inner())) / std::sqrt(double(c.n_layer));
  double max_abs = 0;
  for (double w : m.parameter("backbone.layers.0.mixer.out_proj.weight")->value().to_vector<double>())
    max_abs = std::max(max_abs, std::abs(w));
  REQUIRE(max_abs <= out_bound);
  REQUIRE(max_abs > 0.9 * out_bound);
  // Embedding N(0, 0.02).
  auto e = m.parameter("backbone.embedding.weight")->value().to_vector<double>();
  double ss = 0;
  for (double v : e) ss += v * v;
  REQUIRE(std::sqrt(ss / double(e.size())) == Approx(0.02).epsilon(0.05));
}

TEST_CASE("parameter counts of the reference sizes", "[module][slow]") {
  {
    LanguageModel m(ModelConfig::preset("mamba-130m"), 0);
    int64_t n = m.num_parameters();
    // 24 x 3,771,648 per layer + 50280 x 768 embedding + 768 final norm, head tied.
    REQUIRE(n == 129135360);
    REQUIRE(m.num_parameters(false) == n - 50280 * 768);
    WARN("mamba-130m parameters: " << n);
  }
  {
    LanguageModel m(ModelConfig::preset("gpt2-124m"), 0);
    int64_t n = m.num_parameters();
    // 124,439,808 with the unpadded 50257 vocabulary; + 7 x 768 padding rows.
    REQUIRE(n == 124439808 + 7 * 768);
    REQUIRE(std::abs(double(n) - 124.4e6) < 0.05e6);
    WARN("gpt2-124m parameters: " << n);
  }
  {
    LanguageModel m(ModelConfig::preset("transformer++-125m"), 0);
    WARN("transformer++-125m parameters: " << m.num_parameters());
    // 12 x (4 d^2 attention + 3 x 768 x 2048 SwiGLU + 2 d norms) + V d + d.
    REQUIRE(m.num_parameters() == 12 * (4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768) + 50280 * 768 + 768);
  }
}

TEST_CASE("FLOPs per token: 6 N_matmul + attention + scan", "[module]") {
  ModelConfig c = ModelConfig::preset("gpt2-tiny");
  LanguageModel g(c, 0);
  int64_t d = c.d_model, V = c.padded_vocab_size(), L = c.n_layer;
  int64_t n_matmul = L * (4 * d * d + 8 * d * d) + V * d;
  REQUIRE(g.matmul_parameters() == n_matmul);
  REQUIRE(g.flops_per_token(64) == Approx(6.0 * double(n_matmul) + 12.0 * double(L * d * 64)));

  ModelConfig mc = ModelConfig::preset("mamba-tiny");
  LanguageModel m(mc, 0);
  int64_t di = mc.d_inner(), N = mc.mamba.d_state, R = mc.dt_rank();
  int64_t per_layer = 2 * di * mc.d_model + di * mc.mamba.d_conv + (R + 2 * N) * di + di * R + di * mc.d_model;
  REQUIRE(m.matmul_parameters() == mc.n_layer * per_layer + mc.padded_vocab_size() * mc.d_model);
  REQUIRE(m.flops_per_token(64) ==
          Approx(6.0 * double(m.matmul_parameters()) + 3.0 * double(mc.n_layer) * (9.0 * di * N + 2.0 * di)));
}

TEST_CASE("a compute copy stands in for the cast and routes its gradient to the master", "[module]") {
  Parameter p;
  p.var = Variable(Tensor::from_vector<float>({1, 2, 3}, {3}), true);
  // No copy: compute(f32) is the master itself.
  REQUIRE(p.compute(DType::f32).impl() == p.var.impl());
  Tensor copy = Tensor::from_vector<double>({1, 2, 3}, {3}, DType::f64);
  p.set_compute_copy(copy);
  Variable v = p.compute(DType::f64);
  REQUIRE(v.value().same_buffer(copy));
  v.backward(Tensor::from_vector<double>({1, 1, 2}, {3}, DType::f64));
  REQUIRE(p.var.grad().dtype() == DType::f32);
  REQUIRE(p.var.grad().to_vector<float>() == std::vector<float>{1, 1, 2});
  p.invalidate_compute_copy();
  REQUIRE_FALSE(p.compute_copy.defined());
}
