// RoPE: the CPU reference against the formula, its inverse and central differences; CUDA
// against the CPU (its 16-byte pack path and its scalar fallback).
#include <cmath>
#include <vector>

#include "autograd/functions/rope.h"
#include "autograd/gradcheck.h"
#include "kernels/rope.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using coil::test::random_normal;
using coil::test::relative_error;

TEST_CASE("rope CPU: the half-split rotation by t * base^(-2i/hd)", "[rope]") {
  const int64_t T = 5, H = 2, hd = 8, half = hd / 2;
  Tensor x = random_normal({1, T, H, hd}, 1, DType::f64);
  kernels::RopeOptions o;
  o.base = 500.0;
  o.position_offset = 3;
  Tensor y = kernels::rope(x, o);
  std::vector<double> xv = x.to_vector<double>(), yv = y.to_vector<double>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < half; ++i) {
        double a = double(t + 3) * std::pow(500.0, -2.0 * double(i) / double(hd));
        size_t base = size_t((t * H + h) * hd);
        double x1 = xv[base + size_t(i)], x2 = xv[base + size_t(i + half)];
        REQUIRE(yv[base + size_t(i)] == Approx(x1 * std::cos(a) - x2 * std::sin(a)).margin(1e-5));
        REQUIRE(yv[base + size_t(i + half)] == Approx(x2 * std::cos(a) + x1 * std::sin(a)).margin(1e-5));
      }
  // Position 0 is the identity; the inverse undoes the rotation.
  Tensor x0 = random_normal({2, 1, 3, 16}, 2, DType::f64);
  REQUIRE(relative_error(kernels::rope(x0), x0) < 1e-15);
  Tensor big = random_normal({2, 33, 3, 16}, 3, DType::f64);
  REQUIRE(relative_error(kernels::rope(kernels::rope(big), {}, true), big) < 1e-12);
}

TEST_CASE("rope CPU: packed qkv rotates q and k and copies v", "[rope]") {
  Tensor x = random_normal({2, 7, 3, 2, 8}, 4);
  Tensor y = kernels::rope(x);
  std::vector<float> xv = x.to_vector<float>(), yv = y.to_vector<float>();
  const int64_t row = 2 * 8;
  for (int64_t bt = 0; bt < 14; ++bt)
    for (int64_t sec = 0; sec < 3; ++sec) {
      std::vector<float> part(xv.begin() + (bt * 3 + sec) * row, xv.begin() + (bt * 3 + sec + 1) * row);
      Tensor one = Tensor::from_vector(part, {1, 1, 2, 8});
      int64_t t = bt % 7;
      kernels::RopeOptions o;
      o.position_offset = t;
      std::vector<float> expect = sec < 2 ? kernels::rope(one, o).to_vector<float>() : part;
      for (int64_t i = 0; i < row; ++i)
        REQUIRE(yv[size_t((bt * 3 + sec) * row + i)] == Approx(expect[size_t(i)]).margin(1e-6));
    }
}

TEST_CASE("rope CPU backward matches central differences (f64)", "[rope][grad]") {
  kernels::RopeOptions o;
  o.base = 100.0;
  auto f = [o](const std::vector<autograd::Variable>& x) { return autograd::rope(x[0], o); };
  autograd::GradcheckResult r = autograd::gradcheck(f, {random_normal({2, 6, 2, 6}, 5, DType::f64)});
  INFO(r.message);
  REQUIRE(r.ok);
  autograd::GradcheckResult rp = autograd::gradcheck(f, {random_normal({1, 4, 3, 2, 4}, 6, DType::f64)});
  INFO(rp.message);
  REQUIRE(rp.ok);
}

TEST_CASE("rope: bad shapes are errors", "[rope]") {
  REQUIRE_THROWS_WITH(kernels::rope(random_normal({2, 3, 5}, 1)), Catch::Matchers::Contains("(B, T, H, hd)"));
  REQUIRE_THROWS_WITH(kernels::rope(random_normal({2, 3, 2, 5}, 1)), Catch::Matchers::Contains("even"));
  REQUIRE_THROWS_WITH(kernels::rope(random_normal({2, 3, 2, 2, 4}, 1)), Catch::Matchers::Contains("packed"));
}

TEST_CASE("rope CUDA matches the CPU reference", "[rope][cuda]") {
  for (int64_t hd : {64, 128})
    for (int64_t T : {1, 17, 2048})
      for (bool packed : {false, true})
        for (DType dt : {DType::f32, DType::bf16}) {
          INFO("hd " << hd << " T " << T << " packed " << packed << " " << dtype_name(dt));
          Shape s = packed ? Shape{2, T, 3, 3, hd} : Shape{2, T, 3, hd};
          Tensor x = random_normal(s, uint64_t(T + hd), DType::f32).to(Device::cuda(), dt);
          Tensor xc = x.to(Device::cpu(), DType::f32);
          kernels::RopeOptions o;
          o.position_offset = T == 17 ? 5 : 0;
          Tensor y = kernels::rope(x, o), yb = kernels::rope_backward(x, o);
          REQUIRE(y.dtype() == dt);
          double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
          CHECK(relative_error(y, kernels::rope(xc, o)) < tol);
          CHECK(relative_error(yb, kernels::rope_backward(xc, o)) < tol);
        }
}

// x on the GPU as dtype; misaligned: its data starts one element past a 16-byte boundary (the
// kernel must fall back to scalar accesses).
static Tensor gpu_input(const Shape& shape, uint64_t seed, DType dtype, bool misaligned) {
  Tensor x = random_normal(shape, seed, DType::f32).to(Device::cuda(), dtype);
  if (!misaligned) return x;
  Tensor buffer = Tensor::empty({x.numel() + 1}, dtype, Device::cuda());
  Tensor shifted = buffer.view_bytes(dtype_size(dtype), shape, dtype);
  shifted.copy_(x);
  return shifted;
}

TEST_CASE("rope CUDA: packs and scalar fallback, odd shapes, positions, inverse, v copied", "[rope][cuda]") {
  // hd 18: half 9, scalar for both dtypes; 24 and 40: f32 packs of 4, bf16 scalar; 64 and 96:
  // packs for both. 5 heads: the packed qkv has 15 rows a token, 10 rotated, so the chunks of
  // rows a thread owns end mid-section and short.
  const int64_t B = 3, T = 13, H = 5;
  const std::vector<int32_t> starts = {7, 0, 300};
  for (int64_t hd : {18, 24, 40, 64, 96})
    for (bool packed : {false, true})
      for (bool misaligned : {false, true})
        for (DType dt : {DType::f32, DType::bf16}) {
          INFO("hd " << hd << " packed " << packed << " misaligned " << misaligned << " " << dtype_name(dt));
          Shape s = packed ? Shape{B, T, 3, H, hd} : Shape{B, T, H, hd};
          Tensor x = gpu_input(s, uint64_t(hd + 2 * packed), dt, misaligned);
          Tensor xc = x.to(Device::cpu(), DType::f32);
          kernels::RopeOptions o, oc;
          o.position_offset = oc.position_offset = 11;
          o.positions = Tensor::from_vector(starts, {B}, DType::i32, Device::cuda());
          oc.positions = Tensor::from_vector(starts, {B}, DType::i32);
          Tensor y = kernels::rope(x, o), yb = kernels::rope_backward(x, o);
          Tensor ref = kernels::rope(xc, oc), refb = kernels::rope_backward(xc, oc);
          const double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
          CHECK(relative_error(y, ref) < tol);
          CHECK(relative_error(yb, refb) < tol);
          if (packed) {  // v (section 2 of each token) is copied bit for bit
            std::vector<float> xv = xc.to_vector<float>(), yv = y.to(Device::cpu(), DType::f32).to_vector<float>();
            const size_t section = size_t(H * hd);
            size_t mismatches = 0;
            for (size_t bt = 0; bt < size_t(B * T); ++bt)
              for (size_t e = (3 * bt + 2) * section; e < (3 * bt + 3) * section; ++e) mismatches += yv[e] != xv[e];
            CHECK(mismatches == 0);
          }
        }
}
