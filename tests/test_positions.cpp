// Sinusoidal positions (kernels/positions.h): the CPU values against the original
// Transformer's formula, for i32 and i64 positions of any shape, odd widths and long positions;
// CUDA against the CPU in f32 (the same double formula, rounded once) and bf16.
#include <cmath>
#include <vector>

#include "kernels/positions.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;

namespace {

// PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i + 1] = cos(t / 10000^(2i/d)), written out here
// apart from the kernels' own formula.
double transformer_position(int64_t t, int64_t column, int64_t d) {
  const int64_t i = column / 2;
  const double angle = double(t) / std::pow(10000.0, 2.0 * double(i) / double(d));
  return column % 2 == 0 ? std::sin(angle) : std::cos(angle);
}

}  // namespace

TEST_CASE("sinusoidal positions CPU: PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(...)", "[positions]") {
  const int64_t d = 16;
  const std::vector<int64_t> t = {0, 1, 7, 255, 1000, 1 << 20};
  Tensor out = kernels::sinusoidal_positions(Tensor::from_vector(t, {int64_t(t.size())}, DType::i64), d, DType::f64);
  REQUIRE(out.shape() == Shape{int64_t(t.size()), d});
  std::vector<double> v = out.to_vector<double>();
  for (size_t s = 0; s < t.size(); ++s)
    for (int64_t j = 0; j < d; ++j) {
      INFO("t " << t[s] << " column " << j);
      REQUIRE(v[s * size_t(d) + size_t(j)] == Approx(transformer_position(t[s], j, d)).margin(1e-12));
    }
  // A few values by hand: position 0 is (0, 1, 0, 1, ...); t = 1, i = 0 is (sin 1, cos 1).
  CHECK(v[0] == 0.0);
  CHECK(v[1] == 1.0);
  CHECK(v[size_t(d)] == Approx(std::sin(1.0)).margin(1e-15));
  CHECK(v[size_t(d) + 1] == Approx(std::cos(1.0)).margin(1e-15));
  // i = 4 of d = 16: the angle is t / 10000^(1/2) = t / 100.
  CHECK(v[3 * size_t(d) + 8] == Approx(std::sin(255.0 / 100.0)).margin(1e-12));
  CHECK(v[3 * size_t(d) + 9] == Approx(std::cos(255.0 / 100.0)).margin(1e-12));
}

TEST_CASE("sinusoidal positions CPU: i32 positions of any shape, f32, an odd width ends with a sine", "[positions]") {
  const int64_t d = 5;
  std::vector<int32_t> t = {3, 0, 9, 2, 40, 6};
  Tensor out = kernels::sinusoidal_positions(Tensor::from_vector(t, {2, 3}, DType::i32), d, DType::f32);
  REQUIRE(out.shape() == Shape{2, 3, d});
  REQUIRE(out.dtype() == DType::f32);
  std::vector<float> v = out.to_vector<float>();
  for (size_t s = 0; s < t.size(); ++s)
    for (int64_t j = 0; j < d; ++j) REQUIRE(v[s * size_t(d) + size_t(j)] == Approx(transformer_position(t[s], j, d)).margin(1e-7));
  CHECK_THROWS_WITH(kernels::sinusoidal_positions(Tensor::zeros({3}, DType::f32), 4, DType::f32),
                    Catch::Matchers::Contains("sinusoidal_positions"));
}

TEST_CASE("sinusoidal positions CUDA match the CPU (f32 to its rounding, bf16)", "[positions][cuda]") {
  std::vector<int64_t> t;
  for (int64_t p = 0; p < 300; ++p) t.push_back(p);
  for (int64_t p : {4095, 65536, 1 << 20, (1 << 20) + 17}) t.push_back(p);
  const Tensor positions = Tensor::from_vector(t, {int64_t(t.size())}, DType::i64);
  for (int64_t d : {64, 128, 7}) {
    INFO("d " << d);
    Tensor cpu = kernels::sinusoidal_positions(positions, d, DType::f32);
    for (DType index : {DType::i64, DType::i32}) {
      Tensor gpu = kernels::sinusoidal_positions(positions.to(Device::cuda(), index), d, DType::f32);
      CHECK(test::max_abs_difference(gpu.to(Device::cpu()), cpu) <= 1e-7);
    }
    Tensor bf16 = kernels::sinusoidal_positions(positions.to(Device::cuda()), d, DType::bf16);
    CHECK(test::max_abs_difference(bf16.to(Device::cpu(), DType::f32), cpu) <= 4e-3);
  }
}
