// Layers: gradient checks in f64 on the CPU (input and every parameter) for Linear,
// Embedding, the norms, the MLPs, the Mamba mixer and attention; shapes and behaviours.
#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/gradcheck.h"
#include "layers/basic.h"
#include "layers/mixer.h"
#include "layers/model.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::layers;
using autograd::GradcheckOptions;

namespace {

// Gradient-checks fwd(x) with respect to x (unless it is integer) and every parameter of m,
// in f64 on the CPU. The parameters' Variables are swapped for gradcheck's inputs meanwhile.
template <class Fwd>
void check_module(Module& m, const Tensor& x, Fwd fwd, GradcheckOptions options = {}) {
  m.to_param_dtype(DType::f64);
  m.set_compute_dtype(DType::f64);
  auto params = m.named_parameters();
  std::vector<Tensor> inputs{is_floating(x.dtype()) ? x.to(DType::f64) : x};
  std::vector<Variable> saved;
  for (auto& [n, p] : params) {
    inputs.push_back(p->value());
    saved.push_back(p->var);
  }
  auto f = [&](const std::vector<Variable>& v) {
    for (size_t i = 0; i < params.size(); ++i) params[i].second->var = v[i + 1];
    return fwd(v[0]);
  };
  auto result = autograd::gradcheck(f, inputs, options);
  for (size_t i = 0; i < params.size(); ++i) params[i].second->var = saved[i];
  INFO(result.message);
  REQUIRE(result.ok);
}

ModelConfig small_config() {
  ModelConfig c;
  c.d_model = 8;
  c.n_layer = 2;
  c.vocab_size = 11;
  c.mamba.d_state = 3;
  c.mamba.expand = 2;
  c.mamba.d_conv = 4;
  c.mamba.dt_rank = 2;
  c.attention.n_head = 2;
  c.attention.max_seq_len = 16;
  c.dtype = ComputeDType::f64;
  return c;
}

}  // namespace

TEST_CASE("Linear: gradcheck with and without bias", "[layers]") {
  Generator gen(1);
  for (bool bias : {true, false}) {
    Linear lin(5, 3, bias, gen);
    REQUIRE(lin.weight->shape() == Shape{3, 5});
    REQUIRE(bool(lin.bias) == bias);
    if (bias) {
      // Biases start at zero; give them values so the check sees them.
      Tensor b = lin.bias->var.value();
      b.copy_(test::random_normal({3}, 9));
    }
    check_module(lin, test::random_normal({2, 4, 5}, 2), [&](const Variable& x) { return lin.forward(x); });
  }
}

TEST_CASE("Embedding: gradcheck and shapes", "[layers]") {
  Generator gen(1);
  Embedding emb(7, 4, gen);
  Tensor ids = Tensor::from_vector<int64_t>({0, 6, 3, 3, 1, 5}, {2, 3});
  check_module(emb, ids, [&](const Variable& x) { return emb.forward(x.value()); });
  REQUIRE(emb.forward(ids).shape() == Shape{2, 3, 4});
}

TEST_CASE("RMSNorm and LayerNorm: gradcheck, alone and fused with the residual add", "[layers]") {
  for (NormKind kind : {NormKind::rmsnorm, NormKind::layernorm}) {
    INFO(name(kind));
    Norm norm(kind, 6, 1e-5);
    {
      Tensor w = norm.weight->var.value();
      w.copy_(test::random_normal({6}, 3, DType::f32, Device::cpu(), 0.5));
      if (norm.bias) {
        Tensor b = norm.bias->var.value();
        b.copy_(test::random_normal({6}, 4));
      }
    }
    Tensor x = test::random_normal({2, 3, 6}, 5);
    check_module(norm, x, [&](const Variable& v) { return norm.forward(v); });
    Tensor residual = test::random_normal({2, 3, 6}, 6, DType::f64);
    check_module(norm, x, [&](const Variable& v) {
      auto r = norm.forward_residual(v, Variable(residual, false));
      return autograd::add(r.normed, autograd::scale(r.residual, 0.7));
    });
  }
}

TEST_CASE("MLP: GELU and SwiGLU gradcheck", "[layers]") {
  for (MlpKind kind : {MlpKind::gelu, MlpKind::swiglu}) {
    INFO(name(kind));
    ModelConfig c = small_config();
    c.mlp = kind;
    c.mlp_hidden = 12;
    c.bias = kind == MlpKind::gelu;
    Generator gen(2);
    MLP mlp(c, gen, {}, {});
    REQUIRE(mlp.fc1->weight->shape() == Shape{kind == MlpKind::swiglu ? 24 : 12, 8});
    REQUIRE(mlp.fc2->weight->shape() == Shape{8, 12});
    check_module(mlp, test::random_normal({2, 3, 8}, 7), [&](const Variable& x) { return mlp.forward(x); });
  }
  // The family default for SwiGLU: int(8d/3) rounded up to a multiple of 128.
  ModelConfig c = ModelConfig::preset("transformer++-350m");
  REQUIRE(c.mlp_hidden_size() == 2816);  // 8 * 1024 / 3 = 2730 -> 2816
}

TEST_CASE("MambaMixer: gradcheck through conv1d, x_proj, dt_proj and the selective scan", "[layers]") {
  ModelConfig c = small_config();
  Generator gen(3);
  MambaMixer mixer(c, gen, {}, {}, DType::f64);
  Tensor x = test::random_normal({2, 5, 8}, 11);
  mixer.set_compute_dtype(DType::f64);
  Variable y = mixer.forward(Variable(x.to(DType::f64), false));
  REQUIRE(y.shape() == Shape{2, 5, 8});
  check_module(mixer, x, [&](const Variable& v) { return mixer.forward(v); });
}

TEST_CASE("MambaMixer is causal: a later input does not change earlier outputs", "[layers]") {
  ModelConfig c = small_config();
  Generator gen(4);
  MambaMixer mixer(c, gen, {}, {}, DType::f64);
  mixer.set_compute_dtype(DType::f64);
  Tensor x = test::random_normal({1, 6, 8}, 12, DType::f64);
  Tensor x2 = x.clone();
  x2.data<double>()[5 * 8 + 3] += 1.0;  // change token 5
  auto y1 = mixer.forward(Variable(x, false)).value().to_vector<double>();
  auto y2 = mixer.forward(Variable(x2, false)).value().to_vector<double>();
  for (int t = 0; t < 5; ++t)
    for (int d = 0; d < 8; ++d) REQUIRE(y1[size_t(t * 8 + d)] == y2[size_t(t * 8 + d)]);
  bool changed = false;
  for (int d = 0; d < 8; ++d) changed |= y1[size_t(40 + d)] != y2[size_t(40 + d)];
  REQUIRE(changed);
}

TEST_CASE("MambaMixer without selection: its own delta, B and C, gradcheck through them", "[layers]") {
  ModelConfig c = small_config();
  c.mamba.selective = false;
  Generator gen(3);
  MambaMixer mixer(c, gen, {}, {}, DType::f64);
  REQUIRE(!mixer.x_proj);
  REQUIRE(!mixer.dt_proj);
  std::vector<std::string> names;
  for (auto& [n, p] : mixer.named_parameters()) names.push_back(n);
  REQUIRE(names == std::vector<std::string>{"A_log", "D", "dt_bias", "B", "C", "in_proj.weight", "conv1d.weight",
                                            "conv1d.bias", "out_proj.weight"});
  REQUIRE(mixer.dt_bias->shape() == Shape{c.d_inner()});
  REQUIRE(mixer.B->shape() == Shape{c.mamba.d_state});
  REQUIRE(mixer.C->shape() == Shape{c.mamba.d_state});
  check_module(mixer, test::random_normal({2, 5, 8}, 11), [&](const Variable& v) { return mixer.forward(v); });
}

TEST_CASE("MambaMixer: delta, B and C follow the input with selection and do not without it", "[layers]") {
  for (bool selective : {true, false}) {
    INFO("selective " << selective);
    ModelConfig c = small_config();
    c.mamba.selective = selective;
    Generator gen(7);
    MambaMixer mixer(c, gen, {}, {}, DType::f64);
    mixer.set_compute_dtype(DType::f64);
    const int64_t di = c.d_inner(), N = c.mamba.d_state;
    Tensor xs = test::random_normal({2, 5, di}, 21, DType::f64);
    Tensor perturbed = xs.clone();
    for (int64_t i = 0; i < perturbed.numel(); i += 3) perturbed.data<double>()[i] += 0.5;
    auto a = mixer.ssm_parameters(Variable(xs, false));
    auto b = mixer.ssm_parameters(Variable(perturbed, false));
    REQUIRE(a.delta.shape() == Shape{2, 5, di});
    REQUIRE(a.B.shape() == Shape{2, 5, N});
    REQUIRE(a.C.shape() == Shape{2, 5, N});
    const auto values = [](const Variable& v) { return v.value().to_vector<double>(); };
    if (selective) {
      CHECK(values(a.delta) != values(b.delta));
      CHECK(values(a.B) != values(b.B));
      CHECK(values(a.C) != values(b.C));
      continue;
    }
    CHECK(values(a.delta) == values(b.delta));
    CHECK(values(a.B) == values(b.B));
    CHECK(values(a.C) == values(b.C));
    CHECK(values(a.delta_bias) == values(b.delta_bias));
    // The same at every position of every sequence: the learned parameters themselves.
    auto B = values(a.B), C = values(a.C), delta = values(a.delta);
    auto b_param = mixer.B->value().to_vector<double>(), c_param = mixer.C->value().to_vector<double>();
    for (int64_t p = 0; p < 2 * 5; ++p)
      for (int64_t n = 0; n < N; ++n) {
        REQUIRE(B[size_t(p * N + n)] == b_param[size_t(n)]);
        REQUIRE(C[size_t(p * N + n)] == c_param[size_t(n)]);
      }
    for (double d : delta) REQUIRE(d == 0.0);  // delta = softplus(0 + dt_bias): per channel only
  }
}

TEST_CASE("Attention: gradcheck with RoPE, without positions and with a window", "[layers]") {
  struct Case {
    Positions positions;
    int64_t window;
    bool bias;
  };
  for (Case k : {Case{Positions::rope, 0, false}, Case{Positions::none, 0, true}, Case{Positions::rope, 3, false}}) {
    INFO(name(k.positions) << " window " << k.window);
    ModelConfig c = small_config();
    c.mixer = MixerKind::attention;
    c.attention.positions = k.positions;
    c.attention.window = k.window;
    c.bias = k.bias;
    Generator gen(5);
    Attention attn(c, gen, {}, {}, DType::f64);
    REQUIRE(attn.in_proj->weight->shape() == Shape{24, 8});
    check_module(attn, test::random_normal({2, 5, 8}, 13), [&](const Variable& x) { return attn.forward(x); });
  }
}

TEST_CASE("Attention is causal", "[layers]") {
  ModelConfig c = small_config();
  c.mixer = MixerKind::attention;
  Generator gen(6);
  Attention attn(c, gen, {}, {}, DType::f64);
  attn.set_compute_dtype(DType::f64);
  Tensor x = test::random_normal({1, 6, 8}, 14, DType::f64);
  Tensor x2 = x.clone();
  x2.data<double>()[5 * 8] += 1.0;
  auto y1 = attn.forward(Variable(x, false)).value().to_vector<double>();
  auto y2 = attn.forward(Variable(x2, false)).value().to_vector<double>();
  for (size_t i = 0; i < 40; ++i) REQUIRE(y1[i] == Approx(y2[i]).margin(1e-12));
}

TEST_CASE("Block: gradcheck of a pre-norm block with a mixer and an MLP", "[layers]") {
  for (MixerKind mixer : {MixerKind::mamba, MixerKind::attention}) {
    INFO(name(mixer));
    ModelConfig c = small_config();
    c.mlp = MlpKind::swiglu;
    c.mlp_hidden = 8;
    Generator gen(7);
    Block block(c, mixer, gen, DType::f64);
    Tensor residual = test::random_normal({2, 4, 8}, 15, DType::f64);
    check_module(block, test::random_normal({2, 4, 8}, 16), [&](const Variable& x) {
      auto [h, r] = block.forward(x, Variable(residual, false));
      return autograd::add(h, r);
    });
  }
}
