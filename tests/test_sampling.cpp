// Token sampling (kernels/sampling.h): greedy is the argmax, top-k and top-p keep the sets they
// define, draws follow the softmax, the same seed and counter give the same id, errors;
// [cuda]: the GPU draws exactly the CPU reference's ids.
#include <cmath>
#include <map>

#include "core/random.h"
#include "kernels/sampling.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::kernels;
using Catch::Matchers::Contains;

namespace {

Tensor i32s(std::vector<int32_t> v, Device device = Device::cpu()) {
  return Tensor::from_vector(v, {int64_t(v.size())}, DType::i32, device);
}

// The id drawn from one row of logits with counter c.
int32_t draw(const std::vector<float>& logits, const SamplingOptions& o, int32_t c) {
  Tensor out = i32s({0});
  sample_tokens(Tensor::from_vector(logits, {1, int64_t(logits.size())}), i32s({c}), o, out);
  return out.to_vector<int32_t>()[0];
}

}  // namespace

TEST_CASE("greedy takes the argmax (the lowest id among ties) and never a padding id", "[sampling]") {
  SamplingOptions greedy;
  greedy.temperature = 0;
  CHECK(draw({0.5f, 2.0f, -1.0f, 2.0f}, greedy, 0) == 1);
  greedy.vocab = 3;  // column 3 is padding
  CHECK(draw({0.5f, 1.0f, -1.0f, 9.0f}, greedy, 0) == 1);
  SamplingOptions sample;
  sample.vocab = 3;
  for (int32_t c = 0; c < 200; ++c) CHECK(draw({0.f, 0.f, 0.f, 50.f}, sample, c) < 3);
}

TEST_CASE("draws follow the softmax at the temperature; top-k and top-p keep their sets", "[sampling]") {
  const std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f};
  auto frequencies = [&](const SamplingOptions& o) {
    std::vector<double> f(logits.size(), 0.0);
    const int n = 20000;
    for (int32_t c = 0; c < n; ++c) f[size_t(draw(logits, o, c))] += 1.0 / n;
    return f;
  };
  auto softmax = [&](double temperature, size_t keep) {
    std::vector<double> p(logits.size(), 0.0);
    double sum = 0;
    for (size_t i = 0; i < keep; ++i) sum += p[i] = std::exp(logits[i] / temperature);
    for (auto& v : p) v /= sum;
    return p;
  };
  SamplingOptions o;
  o.temperature = 0.7;
  std::vector<double> f = frequencies(o), p = softmax(0.7, 5);
  for (size_t i = 0; i < p.size(); ++i) CHECK(std::abs(f[i] - p[i]) < 0.015);
  o.temperature = 1.0;
  o.top_k = 2;
  f = frequencies(o), p = softmax(1.0, 2);
  for (size_t i = 0; i < p.size(); ++i) CHECK(std::abs(f[i] - p[i]) < 0.015);
  // softmax(1.0): 0.563, 0.207, 0.126, 0.076, 0.028: the top 3 carry 0.896 >= 0.85, the top 2 not.
  o.top_k = 0;
  o.top_p = 0.85;
  f = frequencies(o), p = softmax(1.0, 3);
  for (size_t i = 0; i < p.size(); ++i) CHECK(std::abs(f[i] - p[i]) < 0.015);
  o.top_p = 0.5;  // the most likely token alone carries 0.563
  for (int32_t c = 0; c < 50; ++c) CHECK(draw(logits, o, c) == 0);
}

TEST_CASE("the same seed and counter give the same id; another seed gives other ids", "[sampling]") {
  Generator gen(3);
  Tensor logits = randn({4, 1000}, gen);
  SamplingOptions o;
  o.seed = 7;
  Tensor counters = i32s({5, 5, 6, 7}), a = i32s({0, 0, 0, 0}), b = i32s({0, 0, 0, 0});
  sample_tokens(logits, counters, o, a);
  sample_tokens(logits, counters, o, b);
  CHECK(a.to_vector<int32_t>() == b.to_vector<int32_t>());
  int differ = 0;
  for (uint64_t seed = 8; seed < 12; ++seed) {
    o.seed = seed;
    sample_tokens(logits, counters, o, b);
    differ += a.to_vector<int32_t>() != b.to_vector<int32_t>();
  }
  CHECK(differ >= 3);
}

TEST_CASE("sampling rejects bad options and shapes", "[sampling]") {
  Tensor logits = Tensor::zeros({2, 8}), counters = i32s({0, 0}), out = i32s({0, 0});
  SamplingOptions o;
  o.top_p = 0;
  CHECK_THROWS_WITH(sample_tokens(logits, counters, o, out), Contains("top_p must be in (0, 1]"));
  o.top_p = 1.01;
  CHECK_THROWS_WITH(sample_tokens(logits, counters, o, out), Contains("top_p must be in (0, 1]"));
  o = {};
  o.top_k = -1;
  CHECK_THROWS_WITH(sample_tokens(logits, counters, o, out), Contains("top_k must be >= 0"));
  o = {};
  o.temperature = -0.5;
  CHECK_THROWS_WITH(sample_tokens(logits, counters, o, out), Contains("temperature must be >= 0"));
  o = {};
  o.vocab = 9;
  CHECK_THROWS_WITH(sample_tokens(logits, counters, o, out), Contains("vocab 9 must be in [0, 8]"));
  o = {};
  CHECK_THROWS_WITH(sample_tokens(logits, i32s({0}), o, out), Contains("counters must be i32 [2]"));
}

TEST_CASE("sampling on the GPU draws the CPU reference's ids", "[sampling][cuda]") {
  struct Case {
    double temperature;
    int64_t top_k;
    double top_p;
  };
  const Case cases[] = {{0, 0, 1}, {1, 0, 1}, {0.6, 0, 1}, {1, 40, 1}, {1, 0, 0.9}, {0.8, 100, 0.7}, {1.3, 1, 1}};
  const int64_t batch = 37, vocab = 50280, columns = 50304;  // a padded GPT-2 vocabulary
  Generator gen(5);
  for (DType dtype : {DType::f32, DType::bf16}) {
    // Logits spread like a language model's: a few large, most small.
    Tensor logits = randn({batch, columns}, gen, DType::f32, Device::cpu(), 0.0, 3.0).to(dtype).to(DType::f32);
    std::vector<int32_t> c(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) c[size_t(b)] = int32_t(100 + 3 * b);
    Tensor counters = i32s(c);
    for (const Case& k : cases) {
      INFO(dtype_name(dtype) << " temperature " << k.temperature << " top_k " << k.top_k << " top_p " << k.top_p);
      SamplingOptions o;
      o.temperature = k.temperature;
      o.top_k = k.top_k;
      o.top_p = k.top_p;
      o.seed = 99;
      o.vocab = vocab;
      Tensor cpu = i32s(std::vector<int32_t>(size_t(batch), -1)), gpu = cpu.to(Device::cuda());
      sample_tokens(logits, counters, o, cpu);
      sample_tokens(logits.to(Device::cuda(), dtype), counters.to(Device::cuda()), o, gpu);
      // Greedy and top-1 pick the same ids. Sampling inverts the cumulative probabilities at
      // one uniform draw, and the GPU's exponentials and sums round differently from the
      // CPU's: a draw within ~1e-6 of a boundary can pick the neighbouring token. One such
      // row in 37 is allowed; a wrong draw, scale or filter changes most rows.
      const std::vector<int32_t> a = gpu.to_vector<int32_t>(), b = cpu.to_vector<int32_t>();
      int64_t differ = 0;
      for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
      CHECK(differ <= (k.temperature == 0 || k.top_k == 1 ? 0 : 1));
    }
  }
}
