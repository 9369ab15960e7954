// RoPE: the CPU reference against the formula, its inverse and central differences; CUDA
// against the CPU.
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
