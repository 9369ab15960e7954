#include <cmath>

#include "autograd/functions/loss.h"
#include "autograd/functions/matmul.h"
#include "autograd/gradcheck.h"
#include "kernels/loss.h"
#include "kernels/matmul.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::autograd;

namespace {

// Restores the chunk size when a test is done.
struct ChunkRows {
  int64_t saved = kernels::linear_cross_entropy_chunk_rows();
  explicit ChunkRows(int64_t rows) { kernels::set_linear_cross_entropy_chunk_rows(rows); }
  ~ChunkRows() { kernels::set_linear_cross_entropy_chunk_rows(saved); }
};

// Random targets in [0, V), every `ignore_every`-th one ignored (-100).
Tensor make_targets(int64_t n, int64_t V, int ignore_every, DType dt = DType::i64, uint64_t seed = 5) {
  Generator gen(seed);
  std::vector<int64_t> t(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) t[size_t(i)] = ignore_every && i % ignore_every == 1 ? -100 : int64_t(gen.next_below(uint64_t(V)));
  return Tensor::from_vector(t, {n}, dt);
}

}  // namespace

TEST_CASE("cross_entropy passes gradcheck, with ignored targets", "[loss]") {
  Tensor logits = test::random_normal({6, 7}, 1, DType::f64);
  for (DType dt : {DType::i64, DType::i32}) {
    Tensor targets = make_targets(6, 7, 3, dt);
    test::require_ok(
        gradcheck([targets](const std::vector<Variable>& v) { return cross_entropy(v[0], targets); }, {logits}));
  }
  Tensor custom = Tensor::from_vector<int64_t>({0, 3, 3, 6, 1, 2}, {6});  // ignore_index 3
  test::require_ok(
      gradcheck([custom](const std::vector<Variable>& v) { return cross_entropy(v[0], custom, 3); }, {logits}));
}

TEST_CASE("cross_entropy values by hand; all ignored gives 0", "[loss]") {
  Tensor logits = Tensor::from_vector<float>({1, 2, 3, 0, 0, 0}, {2, 3});
  Tensor targets = Tensor::from_vector<int64_t>({2, 0}, {2});
  double l0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0)) - 3.0, l1 = std::log(3.0);
  Variable loss = cross_entropy(Variable(logits), targets);
  REQUIRE(loss.dtype() == DType::f32);
  REQUIRE(loss.shape().empty());
  REQUIRE(loss.value().item() == Approx((l0 + l1) / 2));
  Tensor one_ignored = Tensor::from_vector<int64_t>({2, -100}, {2});
  REQUIRE(cross_entropy(Variable(logits), one_ignored).value().item() == Approx(l0));
  Variable x(logits, true);
  Variable none = cross_entropy(x, Tensor::from_vector<int32_t>({-100, -100}, {2}));
  REQUIRE(none.value().item() == 0.0);
  none.backward();
  for (float g : x.grad().to_vector<float>()) REQUIRE(g == 0.0f);
}

TEST_CASE("cross_entropy rejects out-of-range targets and bad shapes", "[loss]") {
  Variable logits(Tensor::zeros({3, 5}), true);
  REQUIRE_THROWS_WITH(cross_entropy(logits, Tensor::from_vector<int64_t>({1, 12, 0}, {3})),
                      Catch::Matchers::Contains("target 12 at position 1") && Catch::Matchers::Contains("[0, 5)"));
  REQUIRE_THROWS_WITH(cross_entropy(logits, Tensor::from_vector<int32_t>({1, 0, -5}, {3})),
                      Catch::Matchers::Contains("target -5 at position 2"));
  REQUIRE_THROWS_WITH(cross_entropy(logits, Tensor::from_vector<int64_t>({1, 2, 3, 4}, {4})),
                      Catch::Matchers::Contains("targets i64[4]") && Catch::Matchers::Contains("must be [3]"));
  REQUIRE_THROWS_WITH(cross_entropy(logits, Tensor::zeros({3})), Catch::Matchers::Contains("f32"));
  REQUIRE_THROWS_WITH(cross_entropy(Variable(Tensor::zeros({2, 3, 5})), Tensor::zeros({2}, DType::i64)),
                      Catch::Matchers::Contains("logits must be [N, V]"));
  Variable hidden(Tensor::zeros({3, 4})), weight(Tensor::zeros({5, 6}));
  REQUIRE_THROWS_WITH(linear_cross_entropy(hidden, weight, Tensor::zeros({3}, DType::i64)),
                      Catch::Matchers::Contains("linear_cross_entropy") && Catch::Matchers::Contains("f32[5, 6]"));
  Variable w5(Tensor::zeros({5, 4}));
  REQUIRE_THROWS_WITH(linear_cross_entropy(hidden, w5, Tensor::from_vector<int64_t>({0, 5, 1}, {3})),
                      Catch::Matchers::Contains("target 5 at position 1"));
}

TEST_CASE("linear_cross_entropy passes gradcheck, in one chunk and in several", "[loss]") {
  Tensor hidden = test::random_normal({7, 4}, 2, DType::f64);
  Tensor weight = test::random_normal({9, 4}, 3, DType::f64);
  Tensor targets = make_targets(7, 9, 3);
  for (int64_t chunk : {4096, 3}) {
    ChunkRows rows(chunk);
    test::require_ok(
        gradcheck([targets](const std::vector<Variable>& v) { return linear_cross_entropy(v[0], v[1], targets); },
                  {hidden, weight}));
  }
}

TEST_CASE("linear_cross_entropy equals cross_entropy of the product", "[loss]") {
  Tensor hidden = test::random_normal({10, 8}, 4);
  Tensor weight = test::random_normal({13, 8}, 5, DType::f32, Device::cpu(), 0.3);
  Tensor targets = make_targets(10, 13, 4, DType::i32);
  Variable h1(hidden, true), w1(weight, true);
  Variable ref = cross_entropy(Variable(kernels::linear(hidden, weight), false), targets);
  kernels::CrossEntropyForward cf = kernels::cross_entropy_forward(kernels::linear(hidden, weight), targets, -100);
  Tensor dlogits = kernels::cross_entropy_backward(Tensor::scalar(2.0), kernels::linear(hidden, weight), targets,
                                                   cf.lse, cf.count, -100);
  Tensor gh = kernels::matmul(dlogits, weight), gw = kernels::matmul(dlogits, hidden, true, false);
  for (int64_t chunk : {4096, 4, 1}) {
    ChunkRows rows(chunk);
    Variable h(hidden, true), w(weight, true);
    Variable loss = linear_cross_entropy(h, w, targets);
    REQUIRE(loss.value().item() == Approx(ref.value().item()).epsilon(1e-6));
    loss.backward(Tensor::scalar(2.0));
    REQUIRE(test::relative_error(h.grad(), gh) < 1e-6);
    REQUIRE(test::relative_error(w.grad(), gw) < 1e-6);
    NoGradGuard no_grad;  // evaluation: the loss alone
    REQUIRE(linear_cross_entropy(h, w, targets).value().item() == Approx(ref.value().item()).epsilon(1e-6));
  }
}

TEST_CASE("cross_entropy on the GPU matches the CPU reference", "[cuda][loss]") {
  const Device gpu = Device::cuda(0);
  for (DType dt : {DType::f32, DType::bf16}) {
    const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
    for (auto [N, V] : std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {33, 7}, {17, 1000}, {5, 50280}, {3, 50277}}) {
      INFO("dtype " << dtype_name(dt) << " N " << N << " V " << V);
      Tensor logits = test::random_normal({N, V}, 9, DType::f32, Device::cpu(), 2.0).to(dt).to(DType::f32);
      Tensor targets = make_targets(N, V, 4);
      Tensor grad = Tensor::scalar(1.5);
      kernels::CrossEntropyForward c = kernels::cross_entropy_forward(logits, targets, -100);
      Tensor dc = kernels::cross_entropy_backward(grad, logits, targets, c.lse, c.count, -100);
      Tensor lg = logits.to(gpu, dt), tg = targets.to(gpu);
      kernels::CrossEntropyForward g = kernels::cross_entropy_forward(lg, tg, -100);
      REQUIRE(g.loss.dtype() == DType::f32);
      REQUIRE(g.loss.item() == Approx(c.loss.item()).epsilon(1e-5));
      Tensor dg = kernels::cross_entropy_backward(grad.to(gpu), lg, tg, g.lse, g.count, -100);
      REQUIRE(dg.dtype() == dt);
      REQUIRE(test::relative_error(dg.to(Device::cpu(), DType::f32), dc) < tol);
      kernels::check_cross_entropy_targets(gpu);  // nothing recorded
    }
  }
}

TEST_CASE("linear_cross_entropy on the GPU matches the CPU reference", "[cuda][loss]") {
  const Device gpu = Device::cuda(0);
  for (DType dt : {DType::f32, DType::bf16}) {
    const double tol = dt == DType::f32 ? 1e-4 : 3e-2;
    for (auto [N, V, d, chunk] : std::vector<std::tuple<int64_t, int64_t, int64_t, int64_t>>{
             {37, 1000, 64, 16}, {5, 50280, 32, 4096}, {130, 50280, 48, 64}, {1, 7, 8, 4096},
             {3, 70001, 16, 4096}}) {
      INFO("dtype " << dtype_name(dt) << " N " << N << " V " << V << " d " << d << " chunk " << chunk);
      Tensor hidden = test::random_normal({N, d}, 11).to(dt).to(DType::f32);
      Tensor weight = test::random_normal({V, d}, 12, DType::f32, Device::cpu(), 0.2).to(dt).to(DType::f32);
      Tensor targets = make_targets(N, V, 5);
      auto c = kernels::linear_cross_entropy_forward(hidden, weight, targets, -100, chunk);
      auto g = kernels::linear_cross_entropy_forward(hidden.to(gpu, dt), weight.to(gpu, dt), targets.to(gpu), -100, chunk);
      REQUIRE(g.loss.item() == Approx(c.loss.item()).epsilon(dt == DType::f32 ? 1e-5 : 1e-2));
      REQUIRE(g.grad_hidden.dtype() == dt);
      REQUIRE(test::relative_error(g.grad_hidden.to(Device::cpu(), DType::f32), c.grad_hidden) < tol);
      REQUIRE(test::relative_error(g.grad_weight.to(Device::cpu(), DType::f32), c.grad_weight) < tol);
      // Through autograd, backward scales the saved gradients.
      ChunkRows rows(chunk);
      Variable h(hidden.to(gpu, dt), true), w(weight.to(gpu, dt), true);
      linear_cross_entropy(h, w, targets.to(gpu)).backward(Tensor::scalar(3.0, DType::f32, gpu));
      Tensor expect = kernels::scale_by_scalar(c.grad_hidden, Tensor::scalar(3.0));
      REQUIRE(test::relative_error(h.grad().to(Device::cpu(), DType::f32), expect) < tol);
    }
  }
}

TEST_CASE("an out-of-range target on the GPU is reported at the check", "[cuda][loss]") {
  const Device gpu = Device::cuda(0);
  Tensor logits = Tensor::zeros({4, 10}, DType::f32, gpu);
  // Targets from the host: validated at once.
  REQUIRE_THROWS_WITH(kernels::cross_entropy_forward(logits, Tensor::from_vector<int64_t>({1, 2, 10, 3}, {4}), -100),
                      Catch::Matchers::Contains("target 10 at position 2"));
  // Targets on the GPU: NaN loss, then the check raises.
  Tensor targets = Tensor::from_vector<int64_t>({1, 2, 3, 77}, {4}).to(gpu);
  kernels::CrossEntropyForward f = kernels::cross_entropy_forward(logits, targets, -100);
  REQUIRE(std::isnan(f.loss.item()));
  REQUIRE_THROWS_WITH(kernels::check_cross_entropy_targets(gpu),
                      Catch::Matchers::Contains("target 77 at position 3") && Catch::Matchers::Contains("[0, 10)"));
  kernels::check_cross_entropy_targets(gpu);  // cleared
}
