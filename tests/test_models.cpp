// Language models of every family (mamba, transformer++, gpt2, hybrid): they build from tiny
// configs, their loss backward reaches every parameter, a whole f64 model passes gradcheck,
// loss() agrees with forward()'s logits, training lowers the loss (sinusoidal positions too,
// which also evaluate past the training length), bad inputs give clear errors; [cuda]: the GPU
// agrees with the CPU.
#include <algorithm>
#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/gradcheck.h"
#include "core/cuda.h"
#include "kernels/layout.h"
#include "layers/model.h"
#include "layers/model_facts.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::layers;
using Catch::Matchers::Contains;

namespace {

const char* kFamilies[] = {"mamba-tiny", "transformer++-tiny", "gpt2-tiny", "hybrid-tiny"};

Tensor random_tokens(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<int64_t> v(static_cast<size_t>(B * T));
  for (auto& x : v) x = int64_t(gen.next_below(uint64_t(vocab)));
  return Tensor::from_vector(v, {B, T});
}

// A model small enough for a full gradcheck.
ModelConfig micro(const std::string& family) {
  ModelConfig c = ModelConfig::preset(family);
  c.d_model = 8;
  c.vocab_size = 11;
  c.mamba.d_state = 3;
  c.mamba.dt_rank = 2;
  c.attention.n_head = 2;
  c.attention.max_seq_len = 8;
  c.mlp_hidden = c.mlp == layers::MlpKind::none ? 0 : 8;
  c.n_layer = family == "hybrid-tiny" ? 2 : 1;
  c.dtype = ComputeDType::f64;
  return c;
}

// Host cross-entropy of logits [B, T, V] against targets, skipping ignore_index.
double host_cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100) {
  auto l = logits.to_vector<double>();
  auto t = targets.to_vector<int64_t>();
  int64_t V = logits.size(-1);
  double total = 0;
  int64_t count = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] == ignore_index) continue;
    double m = -INFINITY;
    for (int64_t v = 0; v < V; ++v) m = std::max(m, l[i * size_t(V) + size_t(v)]);
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(l[i * size_t(V) + size_t(v)] - m);
    total += std::log(s) + m - l[i * size_t(V) + size_t(t[i])];
    ++count;
  }
  return count ? total / double(count) : 0.0;
}

// Twelve SGD steps of m on a learnable sequence: token t+1 = (token t * 5 + 3) mod V, two rows
// of 16 tokens. Returns the loss before the first step and at the last.
std::pair<double, double> sgd_losses(LanguageModel& m) {
  const int64_t B = 2, T = 16, V = m.config().vocab_size;
  std::vector<int64_t> seq(static_cast<size_t>(B * (T + 1)));
  for (int64_t b = 0; b < B; ++b) {
    seq[size_t(b * (T + 1))] = 7 + b;
    for (int64_t t = 1; t <= T; ++t)
      seq[size_t(b * (T + 1) + t)] = (seq[size_t(b * (T + 1) + t - 1)] * 5 + 3) % V;
  }
  std::vector<int64_t> in, out;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      in.push_back(seq[size_t(b * (T + 1) + t)]);
      out.push_back(seq[size_t(b * (T + 1) + t + 1)]);
    }
  Tensor tokens = Tensor::from_vector(in, {B, T}), targets = Tensor::from_vector(out, {B, T});
  double first = 0, last = 0;
  for (int step = 0; step < 12; ++step) {
    m.zero_grad();
    Variable loss = m.loss(tokens, targets);
    loss.backward();
    if (step == 0) first = loss.value().item();
    last = loss.value().item();
    autograd::NoGradGuard no_grad;
    for (auto& [name, p] : m.named_parameters()) {
      auto w = p->value().to_vector<float>();
      auto g = p->var.grad().to_vector<float>();
      for (size_t i = 0; i < w.size(); ++i) w[i] -= 0.5f * g[i];
      Tensor dst = p->var.value();
      dst.copy_(Tensor::from_vector(w, p->shape()));
    }
  }
  return {first, last};
}

}  // namespace

TEST_CASE("every family builds, its loss is near log(V) and backward reaches every parameter", "[models]") {
  for (const char* family : kFamilies) {
    INFO(family);
    ModelConfig c = ModelConfig::preset(family);
    LanguageModel m(c, 1);
    Tensor tokens = random_tokens(2, 16, c.vocab_size, 2);
    Tensor targets = random_tokens(2, 16, c.vocab_size, 3);
    Variable loss = m.loss(tokens, targets);
    REQUIRE(loss.numel() == 1);
    double value = loss.value().item();
    REQUIRE(std::abs(value - std::log(double(c.padded_vocab_size()))) < 0.2);
    loss.backward();
    for (auto& [name, p] : m.named_parameters()) {
      INFO(name);
      REQUIRE(p->var.grad().defined());
      REQUIRE(p->var.grad().shape() == p->shape());
      double ss = 0;
      for (double g : p->var.grad().to_vector<double>()) {
        REQUIRE(std::isfinite(g));
        ss += g * g;
      }
      REQUIRE(ss > 0);
    }
    m.zero_grad();
  }
}

TEST_CASE("loss() equals the cross-entropy of forward()'s logits, ignore_index included", "[models]") {
  for (const char* family : kFamilies) {
    INFO(family);
    ModelConfig c = ModelConfig::preset(family);
    c.n_layer = 2;
    c.layers.clear();
    LanguageModel m(c, 4);
    Tensor tokens = random_tokens(2, 8, c.vocab_size, 5);
    Tensor targets = random_tokens(2, 8, c.vocab_size, 6);
    targets.data<int64_t>()[3] = -100;
    targets.data<int64_t>()[9] = -100;
    autograd::NoGradGuard no_grad;
    Variable logits = m.forward(tokens);
    REQUIRE(logits.shape() == Shape{2, 8, c.padded_vocab_size()});
    double expect = host_cross_entropy(logits.value(), targets);
    REQUIRE(m.loss(tokens, targets).value().item() == Approx(expect).epsilon(1e-4));
  }
}

TEST_CASE("a whole f64 model of each family passes gradcheck", "[models]") {
  for (const char* family : kFamilies) {
    INFO(family);
    ModelConfig c = micro(family);
    LanguageModel m(c, 7);
    REQUIRE(m.compute_dtype() == DType::f64);
    // Norm weights and biases start at 1 and 0: perturb them so their gradients are generic.
    Generator gen(8);
    for (auto& [name, p] : m.named_parameters())
      if (name.find("norm") != std::string::npos) {
        Tensor v = p->var.value();
        Tensor noise = randn(p->shape(), gen, DType::f64, Device::cpu(), 0.0, 0.3);
        auto a = v.to_vector<double>(), b = noise.to_vector<double>();
        for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
        v.copy_(Tensor::from_vector(a, p->shape()));
      }
    Tensor tokens = random_tokens(2, 5, c.vocab_size, 9);
    auto params = m.named_parameters();
    std::vector<Tensor> inputs;
    std::vector<Variable> saved;
    for (auto& [n, p] : params) {
      inputs.push_back(p->value());
      saved.push_back(p->var);
    }
    auto f = [&](const std::vector<Variable>& v) {
      for (size_t i = 0; i < params.size(); ++i) params[i].second->var = v[i];
      return m.forward(tokens);
    };
    auto result = autograd::gradcheck(f, inputs);
    for (size_t i = 0; i < params.size(); ++i) params[i].second->var = saved[i];
    INFO(result.message);
    REQUIRE(result.ok);
  }
}

TEST_CASE("a few SGD steps lower the loss of each family", "[models]") {
  for (const char* family : kFamilies) {
    INFO(family);
    LanguageModel m(ModelConfig::preset(family), 10);
    auto [first, last] = sgd_losses(m);
    WARN(family << ": loss " << first << " -> " << last);
    REQUIRE(last < first - 0.5);
  }
}

TEST_CASE("sinusoidal positions: no parameters, the model trains and evaluates beyond its training length",
          "[models]") {
  ModelConfig c = ModelConfig::preset("transformer++-tiny");
  c.attention.positions = Positions::sinusoidal;
  c.attention.max_seq_len = 16;  // the learned table's size: sinusoidal positions ignore it
  LanguageModel m(c, 10);
  LanguageModel rope(ModelConfig::preset("transformer++-tiny"), 10);
  CHECK(m.parameter_count() == rope.parameter_count());
  CHECK(m.parameter_count() == parameter_counts(c).total);
  auto [first, last] = sgd_losses(m);
  WARN("sinusoidal: loss " << first << " -> " << last);
  REQUIRE(last < first - 0.5);
  // The positions reach the model: the same tokens at other positions give other outputs.
  autograd::NoGradGuard no_grad;
  Tensor repeated = Tensor::from_vector(std::vector<int64_t>(8, 5), {1, 8});
  Tensor h = m.hidden_states(repeated).value();
  CHECK(test::relative_error(kernels::narrow(h, 1, 7, 1), kernels::narrow(h, 1, 0, 1)) > 1e-2);
  // 4x the training length, past model.attention.max_seq_len: finite logits.
  Tensor logits = m.forward(random_tokens(1, 64, c.vocab_size, 3)).value();
  REQUIRE(logits.size(1) == 64);
  std::vector<float> values = logits.to_vector<float>();
  REQUIRE(std::all_of(values.begin(), values.end(), [](float v) { return std::isfinite(v); }));
}

TEST_CASE("bad inputs give clear errors", "[models]") {
  LanguageModel g(ModelConfig::preset("gpt2-tiny"), 0);
  int64_t max_len = g.config().attention.max_seq_len;
  REQUIRE_THROWS_WITH(g.loss(random_tokens(1, max_len + 1, 256, 0), random_tokens(1, max_len + 1, 256, 1)),
                      Contains("exceeds model.attention.max_seq_len"));
  REQUIRE_THROWS_WITH(g.forward(Tensor::zeros({4}, DType::i64)), Contains("tokens must be [B, T]"));
  REQUIRE_THROWS_WITH(g.forward(Tensor::zeros({1, 4}, DType::f32)), Contains("tokens must be [B, T]"));
  REQUIRE_THROWS_WITH(g.loss(random_tokens(1, 4, 256, 0), random_tokens(1, 5, 256, 0)),
                      Contains("targets"));
  // A token outside the (padded) vocabulary: the embedding op names it.
  Tensor bad = random_tokens(1, 4, 256, 0);
  bad.data<int64_t>()[2] = 9999;
  REQUIRE_THROWS_WITH(g.forward(bad), Contains("9999"));
  // f64 is CPU-only.
  ModelConfig c = ModelConfig::preset("mamba-tiny");
  c.dtype = ComputeDType::f64;
  REQUIRE_THROWS_WITH(resolve_compute_dtype(c, Device::cuda(0)), Contains("CPU-only"));
}

TEST_CASE("i32 tokens work like i64 tokens", "[models]") {
  LanguageModel m(ModelConfig::preset("hybrid-tiny"), 0);
  Tensor t64 = random_tokens(2, 8, 256, 1), y64 = random_tokens(2, 8, 256, 2);
  autograd::NoGradGuard no_grad;
  double a = m.loss(t64, y64).value().item();
  double b = m.loss(t64.to(DType::i32), y64.to(DType::i32)).value().item();
  REQUIRE(a == Approx(b).epsilon(1e-6));
}

// ---- CUDA against the CPU ----

namespace {

void compare_cuda_cpu(ModelConfig c, ComputeDType dtype, double loss_tol, double grad_tol) {
  const std::string family = c.name;
  c.dtype = dtype;
  ModelConfig cpu_config = c;
  cpu_config.dtype = ComputeDType::f32;  // the reference: f32 on the CPU
  LanguageModel cpu(cpu_config, 3);
  LanguageModel gpu(c, 3);
  gpu.to(Device::cuda(0));
  REQUIRE(gpu.device().is_cuda());
  // The same seed: the same initialization on both devices, bit for bit.
  for (auto& [n, p] : cpu.named_parameters()) REQUIRE(test::bitwise_equal(p->value(), gpu.parameter(n)->value()));

  Tensor tokens = random_tokens(2, 64, c.vocab_size, 4), targets = random_tokens(2, 64, c.vocab_size, 5);
  Variable lc = cpu.loss(tokens, targets);
  Variable lg = gpu.loss(tokens.to(Device::cuda(0)), targets.to(Device::cuda(0)));
  lc.backward();
  lg.backward();
  INFO(family << " " << name(dtype) << ": cpu loss " << lc.value().item() << " gpu loss " << lg.value().item());
  REQUIRE(std::abs(lc.value().item() - lg.value().item()) < loss_tol);
  for (auto& [n, p] : cpu.named_parameters()) {
    double err = test::relative_error(gpu.parameter(n)->var.grad().to(Device::cpu()), p->var.grad());
    INFO(n << " gradient relative error " << err);
    REQUIRE(err < grad_tol);
  }
  // Logits of the eval path agree too.
  autograd::NoGradGuard no_grad;
  Tensor a = cpu.forward(tokens).value();
  Tensor b = gpu.forward(tokens.to(Device::cuda(0))).value().to(Device::cpu(), DType::f32);
  REQUIRE(test::relative_error(b, a) < grad_tol);
}

}  // namespace

TEST_CASE("CUDA forward and backward match the CPU in f32 for each family", "[cuda][models]") {
  // f32 on the GPU (attention computes in bf16 inside its kernels, hence the tolerances).
  for (const char* family : kFamilies) compare_cuda_cpu(ModelConfig::preset(family), ComputeDType::f32, 2e-2, 5e-2);
}

TEST_CASE("CUDA matches the CPU with sinusoidal positions", "[cuda][models]") {
  ModelConfig c = ModelConfig::preset("transformer++-tiny");
  c.attention.positions = Positions::sinusoidal;
  compare_cuda_cpu(c, ComputeDType::f32, 2e-2, 5e-2);
}

TEST_CASE("CUDA bf16 compute (the GPU default) stays close to the f32 CPU model", "[cuda][models]") {
  for (const char* family : kFamilies) compare_cuda_cpu(ModelConfig::preset(family), ComputeDType::bf16, 5e-2, 1.5e-1);
}

TEST_CASE("CUDA matches the CPU for the Mamba without selection (model.mamba.selective: false)", "[cuda][models]") {
  ModelConfig c = ModelConfig::preset("mamba-tiny");
  c.mamba.selective = false;
  compare_cuda_cpu(c, ComputeDType::f32, 2e-2, 5e-2);
  compare_cuda_cpu(c, ComputeDType::bf16, 5e-2, 1.5e-1);
}

TEST_CASE("CUDA matches the CPU at head dim 96 (the 760M presets' d_model 1536 / 16 heads)", "[cuda][models]") {
  for (const char* family : {"transformer++-tiny", "gpt2-tiny"}) {
    ModelConfig c = ModelConfig::preset(family);
    c.d_model = 192;
    REQUIRE(c.head_dim() == 96);
    compare_cuda_cpu(c, ComputeDType::f32, 2e-2, 5e-2);
    compare_cuda_cpu(c, ComputeDType::bf16, 5e-2, 1.5e-1);
  }
}

TEST_CASE("auto dtype: bf16 compute on CUDA, fp32 masters and gradients", "[cuda][models]") {
  LanguageModel m(ModelConfig::preset("mamba-tiny"), 0);
  REQUIRE(m.compute_dtype() == DType::f32);
  m.to(Device::cuda(0));
  REQUIRE(m.compute_dtype() == DType::bf16);
  Tensor tokens = random_tokens(2, 32, 256, 1).to(Device::cuda(0));
  Variable loss = m.loss(tokens, tokens);
  REQUIRE(loss.dtype() == DType::f32);
  loss.backward();
  for (auto& [n, p] : m.named_parameters()) {
    INFO(n);
    REQUIRE(p->value().dtype() == DType::f32);
    REQUIRE(p->var.grad().dtype() == DType::f32);
  }
}
