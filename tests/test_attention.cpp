// Causal attention: the CPU reference against the math and central differences; the CUDA
// flash kernels against the CPU reference (forward, lse and gradients) at awkward sizes.
#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/functions/attention.h"
#include "autograd/gradcheck.h"
#include "kernels/attention.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using coil::test::random_normal;
using coil::test::grad_error;
using coil::test::relative_error;

namespace {

kernels::AttentionOptions with_window(int64_t w) {
  kernels::AttentionOptions o;
  o.window = w;
  return o;
}

// Concatenates q, k, v (B, T, H, hd) into a packed (B, T, 3, H, hd) tensor on the CPU.
Tensor pack(const Tensor& q, const Tensor& k, const Tensor& v) {
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), hd = q.size(3);
  std::vector<double> a = q.to_vector<double>(), b = k.to_vector<double>(), c = v.to_vector<double>();
  std::vector<double> out(size_t(3 * a.size()));
  int64_t row = H * hd;
  for (int64_t bt = 0; bt < B * T; ++bt)
    for (int64_t i = 0; i < row; ++i) {
      out[size_t((bt * 3 + 0) * row + i)] = a[size_t(bt * row + i)];
      out[size_t((bt * 3 + 1) * row + i)] = b[size_t(bt * row + i)];
      out[size_t((bt * 3 + 2) * row + i)] = c[size_t(bt * row + i)];
    }
  return Tensor::from_vector(out, {B, T, 3, H, hd}, q.dtype());
}

// Section s of a packed (B, T, 3, H, hd) tensor, as (B, T, H, hd) on the CPU in f64.
Tensor unpack(const Tensor& x, int s) {
  int64_t B = x.size(0), T = x.size(1), H = x.size(3), hd = x.size(4), row = H * hd;
  std::vector<double> a = x.to_vector<double>(), out(size_t(B * T * row));
  for (int64_t bt = 0; bt < B * T; ++bt)
    for (int64_t i = 0; i < row; ++i) out[size_t(bt * row + i)] = a[size_t((bt * 3 + s) * row + i)];
  return Tensor::from_vector(out, {B, T, H, hd}, DType::f64);
}

}  // namespace

TEST_CASE("attention CPU: one token attends to itself; window 1 copies v", "[attention]") {
  Tensor q = random_normal({2, 1, 3, 8}, 1, DType::f64), k = random_normal({2, 1, 3, 8}, 2, DType::f64),
         v = random_normal({2, 1, 3, 8}, 3, DType::f64);
  kernels::AttentionOutput r = kernels::attention_forward(q, k, v);
  REQUIRE(relative_error(r.out, v) < 1e-14);
  // lse of a single score is the score.
  std::vector<double> qv = q.to_vector<double>(), kv = k.to_vector<double>();
  std::vector<float> lse = r.lse.to_vector<float>();
  for (int b = 0; b < 2; ++b)
    for (int h = 0; h < 3; ++h) {
      double dot = 0;
      for (int d = 0; d < 8; ++d) dot += qv[size_t((b * 3 + h) * 8 + d)] * kv[size_t((b * 3 + h) * 8 + d)];
      REQUIRE(lse[size_t(b * 3 + h)] == Approx(dot / std::sqrt(8.0)).epsilon(1e-5));
    }
  Tensor q2 = random_normal({1, 9, 2, 4}, 4, DType::f64), k2 = random_normal({1, 9, 2, 4}, 5, DType::f64),
         v2 = random_normal({1, 9, 2, 4}, 6, DType::f64);
  REQUIRE(relative_error(kernels::attention_forward(q2, k2, v2, with_window(1)).out, v2) < 1e-14);
}

TEST_CASE("attention CPU: a causal row is the softmax over its prefix", "[attention]") {
  const int64_t T = 6, hd = 4;
  Tensor q = random_normal({1, T, 1, hd}, 11, DType::f64), k = random_normal({1, T, 1, hd}, 12, DType::f64),
         v = random_normal({1, T, 1, hd}, 13, DType::f64);
  for (int64_t window : {0, 3}) {
    Tensor out = kernels::attention_forward(q, k, v, with_window(window)).out;
    std::vector<double> qv = q.to_vector<double>(), kv = k.to_vector<double>(), vv = v.to_vector<double>(),
                        ov = out.to_vector<double>();
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> w(size_t(T), 0.0);
      double z = 0;
      for (int64_t s = 0; s <= t; ++s) {
        if (window > 0 && t - s >= window) continue;
        double dot = 0;
        for (int64_t d = 0; d < hd; ++d) dot += qv[size_t(t * hd + d)] * kv[size_t(s * hd + d)];
        w[size_t(s)] = std::exp(dot / 2.0);
        z += w[size_t(s)];
      }
      for (int64_t d = 0; d < hd; ++d) {
        double o = 0;
        for (int64_t s = 0; s < T; ++s) o += w[size_t(s)] / z * vv[size_t(s * hd + d)];
        REQUIRE(ov[size_t(t * hd + d)] == Approx(o).epsilon(1e-12));
      }
    }
  }
}

TEST_CASE("attention CPU backward matches central differences (f64)", "[attention][grad]") {
  for (int64_t window : {0, 3}) {
    INFO("window " << window);
    auto f = [window](const std::vector<autograd::Variable>& x) {
      return autograd::attention(x[0], x[1], x[2], with_window(window));
    };
    std::vector<Tensor> in = {random_normal({2, 5, 2, 4}, 21, DType::f64),
                              random_normal({2, 5, 2, 4}, 22, DType::f64),
                              random_normal({2, 5, 2, 4}, 23, DType::f64)};
    autograd::GradcheckResult r = autograd::gradcheck(f, in);
    INFO(r.message);
    REQUIRE(r.ok);
    // The packed layout gives the same function.
    auto fp = [window](const std::vector<autograd::Variable>& x) {
      return autograd::attention(x[0], with_window(window));
    };
    autograd::GradcheckResult rp =
        autograd::gradcheck(fp, {random_normal({1, 7, 3, 2, 6}, 24, DType::f64)});
    INFO(rp.message);
    REQUIRE(rp.ok);
  }
}

TEST_CASE("attention CPU: packed and separate layouts agree", "[attention]") {
  Tensor q = random_normal({2, 13, 3, 8}, 31), k = random_normal({2, 13, 3, 8}, 32),
         v = random_normal({2, 13, 3, 8}, 33), g = random_normal({2, 13, 3, 8}, 34);
  Tensor qkv = pack(q, k, v);
  auto a = kernels::attention_forward(q, k, v, with_window(4));
  auto b = kernels::attention_forward_packed(qkv, with_window(4));
  REQUIRE(relative_error(a.out, b.out) < 1e-6);
  REQUIRE(relative_error(a.lse, b.lse) < 1e-6);
  auto ga = kernels::attention_backward(g, q, k, v, a.out, a.lse, with_window(4));
  Tensor gb = kernels::attention_backward_packed(g, qkv, b.out, b.lse, with_window(4));
  REQUIRE(relative_error(unpack(gb, 0), ga.dq) < 1e-6);
  REQUIRE(relative_error(unpack(gb, 1), ga.dk) < 1e-6);
  REQUIRE(relative_error(unpack(gb, 2), ga.dv) < 1e-6);
}

TEST_CASE("attention: bad shapes are errors that name the limit", "[attention]") {
  Tensor q = random_normal({1, 4, 2, 8}, 1), k = random_normal({1, 5, 2, 8}, 2);
  REQUIRE_THROWS_WITH(kernels::attention_forward(q, k, q), Catch::Matchers::Contains("attention_forward"));
  REQUIRE_THROWS_WITH(kernels::attention_forward(q.reshape({4, 2, 8}), q.reshape({4, 2, 8}), q.reshape({4, 2, 8})),
                      Catch::Matchers::Contains("attention_forward"));
  REQUIRE_THROWS_WITH(kernels::attention_forward_packed(random_normal({1, 4, 2, 2, 8}, 3)),
                      Catch::Matchers::Contains("(B, T, 3, H, hd)"));
  REQUIRE_THROWS_WITH(kernels::attention_forward(q, q, q, with_window(-1)),
                      Catch::Matchers::Contains("window"));
  Tensor odd = random_normal({1, 4, 2, 7}, 4);
  REQUIRE_THROWS_WITH(kernels::attention_forward(odd, odd, odd), Catch::Matchers::Contains("even"));
}

TEST_CASE("attention launch settings: only the measured choices are accepted", "[attention]") {
  const kernels::AttentionLaunch initial = kernels::attention_launch();
  REQUIRE_THROWS_WITH(kernels::set_attention_launch({6, 32, 4, 4}),
                      Catch::Matchers::Contains("warps per block must be 4 or 8, got forward 6"));
  REQUIRE_THROWS_WITH(kernels::set_attention_launch({4, 24, 4, 4}),
                      Catch::Matchers::Contains("forward rows per warp must be 16 or 32, got 24"));
  kernels::set_attention_launch({8, 16, 8, 4});
  REQUIRE(kernels::attention_launch().fwd_warps == 8);
  REQUIRE(kernels::attention_launch().fwd_rows == 16);
  REQUIRE(kernels::attention_launch().dq_warps == 4);
  kernels::set_attention_launch(initial);
}

// ------------------------------------------------------------------------------------------
// CUDA

namespace {

struct CudaCase {
  int64_t B, T, H, hd, window;
};

// Runs forward and backward on the GPU in `dtype` and on the CPU in f32 from the same
// (bf16-rounded where dtype is bf16) inputs; compares out, lse, dq, dk, dv.
void compare_with_cpu(const CudaCase& c, DType dtype, uint64_t seed, bool packed) {
  INFO("B " << c.B << " T " << c.T << " H " << c.H << " hd " << c.hd << " window " << c.window
            << " dtype " << dtype_name(dtype) << (packed ? " packed" : " separate"));
  Shape s{c.B, c.T, c.H, c.hd};
  Device gpu = Device::cuda();
  Tensor q = random_normal(s, seed, DType::f32, Device::cpu(), 1.3).to(gpu, dtype);
  Tensor k = random_normal(s, seed + 1, DType::f32, Device::cpu(), 1.3).to(gpu, dtype);
  Tensor v = random_normal(s, seed + 2, DType::f32).to(gpu, dtype);
  Tensor g = random_normal(s, seed + 3, DType::f32).to(gpu, dtype);
  Tensor qc = q.to(Device::cpu(), DType::f32), kc = k.to(Device::cpu(), DType::f32),
         vc = v.to(Device::cpu(), DType::f32), gc = g.to(Device::cpu(), DType::f32);
  auto opt = with_window(c.window);
  auto ref = kernels::attention_forward(qc, kc, vc, opt);
  auto rg = kernels::attention_backward(gc, qc, kc, vc, ref.out, ref.lse, opt);

  Tensor out, lse, dq, dk, dv;
  if (packed) {
    Tensor qkv = pack(qc, kc, vc).to(gpu, dtype);
    auto r = kernels::attention_forward_packed(qkv, opt);
    Tensor d = kernels::attention_backward_packed(g, qkv, r.out, r.lse, opt);
    out = r.out;
    lse = r.lse;
    dq = unpack(d, 0);
    dk = unpack(d, 1);
    dv = unpack(d, 2);
  } else {
    auto r = kernels::attention_forward(q, k, v, opt);
    auto d = kernels::attention_backward(g, q, k, v, r.out, r.lse, opt);
    REQUIRE(r.out.dtype() == dtype);
    REQUIRE(d.dq.dtype() == dtype);
    out = r.out;
    lse = r.lse;
    dq = d.dq;
    dk = d.dk;
    dv = d.dv;
  }
  REQUIRE(out.device().is_cuda());
  double tol = 1.5e-2;  // bf16 products (f32 inputs are computed in bf16 too)
  CHECK(relative_error(out, ref.out) < tol);
  CHECK(relative_error(lse, ref.lse) < 1e-3);
  CHECK(grad_error(dq, rg.dq, rg.dv) < 2 * tol);
  CHECK(grad_error(dk, rg.dk, rg.dv) < 2 * tol);
  CHECK(relative_error(dv, rg.dv) < 2 * tol);
}

}  // namespace

TEST_CASE("attention CUDA bf16 matches the CPU reference", "[attention][cuda]") {
  uint64_t seed = 100;
  for (int64_t hd : {64, 96, 128})
    for (int64_t T : {1, 17, 256})
      for (int64_t window : {int64_t(0), T > 1 ? T / 3 + 1 : int64_t(1)})
        compare_with_cpu({2, T, 3, hd, window}, DType::bf16, seed += 10, false);
}

TEST_CASE("attention CUDA bf16 at T = 2048 matches the CPU reference", "[attention][cuda]") {
  compare_with_cpu({1, 2048, 2, 64, 0}, DType::bf16, 200, false);
  compare_with_cpu({1, 2048, 1, 128, 0}, DType::bf16, 210, false);
  compare_with_cpu({1, 2048, 2, 64, 700}, DType::bf16, 220, false);
  compare_with_cpu({1, 2048, 1, 128, 300}, DType::bf16, 230, true);
  compare_with_cpu({1, 2048, 2, 96, 0}, DType::bf16, 240, false);
  compare_with_cpu({1, 2048, 1, 96, 500}, DType::bf16, 250, true);
}

TEST_CASE("attention CUDA: packed qkv, f32 inputs, small windows", "[attention][cuda]") {
  compare_with_cpu({2, 77, 2, 64, 0}, DType::bf16, 300, true);
  compare_with_cpu({1, 130, 2, 128, 0}, DType::bf16, 310, true);
  compare_with_cpu({2, 17, 2, 64, 0}, DType::f32, 320, false);
  compare_with_cpu({1, 200, 2, 128, 50}, DType::f32, 330, false);
  compare_with_cpu({1, 150, 2, 64, 1}, DType::bf16, 340, false);
  compare_with_cpu({1, 150, 2, 128, 64}, DType::bf16, 350, true);
  compare_with_cpu({2, 45, 2, 96, 0}, DType::f32, 360, true);
}

TEST_CASE("attention CUDA at awkward lengths, every head dim, causal and windowed", "[attention][cuda]") {
  // Issue 18's lengths. The CPU reference is O(T^2 hd) (on every CPU thread): one batch row and
  // one head at 4097 (its causal backward is the bulk of this case's time), more where cheap.
  uint64_t seed = 500;
  for (int64_t hd : {64, 96, 128})
    for (int64_t T : {1, 7, 65, 1000, 4097}) {
      const int64_t rows = T > 1000 ? 1 : 2;
      const int64_t window = std::max<int64_t>(1, std::min<int64_t>(T / 2, 300));
      compare_with_cpu({rows, T, rows, hd, 0}, DType::bf16, seed += 10, T % 2 == 1);
      compare_with_cpu({rows, T, rows, hd, window}, DType::bf16, seed += 10, T % 2 == 0);
    }
}

TEST_CASE("attention CUDA forward and backward are deterministic", "[attention][cuda]") {
  // Run twice, bit-identical: every head dim, causal and windowed, lengths that end mid-tile.
  Device gpu = Device::cuda();
  uint64_t seed = 0;
  for (int64_t hd : {64, 96, 128})
    for (int64_t window : {0, 100}) {
      INFO("hd " << hd << " window " << window);
      Shape s{2, 333, 4, hd};
      Tensor q = random_normal(s, ++seed, DType::bf16, gpu), k = random_normal(s, ++seed, DType::bf16, gpu),
             v = random_normal(s, ++seed, DType::bf16, gpu), g = random_normal(s, ++seed, DType::bf16, gpu);
      auto opt = with_window(window);
      auto r = kernels::attention_forward(q, k, v, opt);
      auto r2 = kernels::attention_forward(q, k, v, opt);
      REQUIRE(coil::test::bitwise_equal(r.out, r2.out));
      REQUIRE(coil::test::bitwise_equal(r.lse, r2.lse));
      auto a = kernels::attention_backward(g, q, k, v, r.out, r.lse, opt);
      auto b = kernels::attention_backward(g, q, k, v, r.out, r.lse, opt);
      REQUIRE(coil::test::bitwise_equal(a.dq, b.dq));
      REQUIRE(coil::test::bitwise_equal(a.dk, b.dk));
      REQUIRE(coil::test::bitwise_equal(a.dv, b.dv));
    }
}

TEST_CASE("attention CUDA: unsupported head dims and mismatched shapes are errors", "[attention][cuda]") {
  Device gpu = Device::cuda();
  Tensor q80 = random_normal({1, 8, 2, 80}, 1, DType::bf16, gpu);
  REQUIRE_THROWS_WITH(kernels::attention_forward(q80, q80, q80),
                      Catch::Matchers::Contains("head dim 80 is not supported on CUDA (supported: 64, 96 and 128)"));
  Tensor qkv32 = random_normal({1, 8, 3, 2, 32}, 2, DType::bf16, gpu);
  REQUIRE_THROWS_WITH(kernels::attention_forward_packed(qkv32), Catch::Matchers::Contains("head dim 32"));
  REQUIRE_THROWS_WITH(kernels::attention_backward_packed(q80, qkv32, q80, q80),
                      Catch::Matchers::Contains("head dim 32"));
  Tensor q = random_normal({1, 8, 2, 64}, 3, DType::bf16, gpu), k = random_normal({1, 9, 2, 64}, 4, DType::bf16, gpu);
  REQUIRE_THROWS_WITH(kernels::attention_forward(q, k, q), Catch::Matchers::Contains("attention_forward"));
  Tensor qcpu = random_normal({1, 8, 2, 64}, 5);
  REQUIRE_THROWS_WITH(kernels::attention_forward(q, qcpu, q), Catch::Matchers::Contains("attention_forward"));
  auto r = kernels::attention_forward(q, q, q);
  Tensor bad_lse = Tensor::zeros({1, 8, 2}, DType::f32, gpu);
  REQUIRE_THROWS_WITH(kernels::attention_backward(q, q, q, q, r.out, bad_lse), Catch::Matchers::Contains("lse"));
}

TEST_CASE("attention CUDA autograd op matches the CPU op", "[attention][cuda]") {
  Tensor x = random_normal({1, 40, 3, 2, 64}, 7);
  Tensor w = random_normal({1, 40, 2, 64}, 8);
  Tensor grads[2];
  Tensor outs[2];
  for (int i = 0; i < 2; ++i) {
    Device dev = i == 0 ? Device::cpu() : Device::cuda();
    autograd::Variable qkv(x.to(dev), true);
    autograd::Variable y = autograd::attention(qkv, with_window(9));
    y.backward(w.to(dev));
    outs[i] = y.value();
    grads[i] = qkv.grad();
  }
  REQUIRE(relative_error(outs[1], outs[0]) < 1.5e-2);
  REQUIRE(relative_error(grads[1], grads[0]) < 3e-2);
}

TEST_CASE("attention CUDA: every launch configuration matches the CPU reference", "[attention][cuda]") {
  // Warps per block 4 and 8 of the three kernels; 16 and 32 query rows per warp of the forward
  // (the portable kernels, also on a GPU where the Hopper ones would run).
  const kernels::AttentionLaunch initial = kernels::attention_launch();
  const kernels::AttentionKernel forward = kernels::attention_forward_kernel(),
                                 backward = kernels::attention_backward_kernel();
  kernels::set_attention_forward_kernel(kernels::AttentionKernel::portable);
  kernels::set_attention_backward_kernel(kernels::AttentionKernel::portable);
  for (int w : {4, 8})
    for (int rows : {16, 32}) {
      INFO("warps " << w << " forward rows per warp " << rows);
      kernels::set_attention_launch({w, rows, w, w});
      compare_with_cpu({2, 200, 2, 64, 0}, DType::bf16, 400, false);
      compare_with_cpu({1, 301, 2, 128, 0}, DType::bf16, 410, true);
      compare_with_cpu({1, 257, 2, 64, 100}, DType::bf16, 420, false);
      compare_with_cpu({1, 1, 2, 128, 0}, DType::bf16, 430, false);
      compare_with_cpu({1, 333, 2, 96, 0}, DType::bf16, 440, true);
      compare_with_cpu({2, 100, 1, 96, 37}, DType::bf16, 450, false);
    }
  kernels::set_attention_launch(initial);
  kernels::set_attention_forward_kernel(forward);
  kernels::set_attention_backward_kernel(backward);
}
