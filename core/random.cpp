#include "core/random.h"

#include <cmath>

#include "core/philox.h"

namespace coil {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, uint64_t key) {
  PhiloxWords r = philox4x32_10({{c[0], c[1], c[2], c[3]}}, key);
  return {r.w[0], r.w[1], r.w[2], r.w[3]};
}

namespace {
// Word i of the stream (seed, offset): block (offset + i) / 4, lane (offset + i) % 4.
uint32_t stream_word(uint64_t seed, uint64_t position) {
  uint64_t block = position / 4;
  auto r = philox4x32({uint32_t(block), uint32_t(block >> 32), 0, 0}, seed);
  return r[position % 4];
}
double to_unit(uint32_t w) { return philox_unit(w); }  // 24 bits: exact in f32

// f(i, word offset + i) for i < n, each Philox block of 4 words computed once.
template <class F>
void for_each_word(uint64_t seed, uint64_t offset, int64_t n, F&& f) {
  PhiloxWords r{};
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t position = offset + uint64_t(i), block = position / 4;
    if (i == 0 || position % 4 == 0) r = philox4x32_10({{uint32_t(block), uint32_t(block >> 32), 0, 0}}, seed);
    f(i, r.w[position % 4]);
  }
}
}  // namespace

uint32_t Generator::next_u32() { return stream_word(seed, offset++); }

uint64_t Generator::next_below(uint64_t bound) {
  uint64_t hi = next_u32(), lo = next_u32();
  return ((hi << 32) | lo) % bound;
}

void Generator::uniform(double* out, int64_t n) {
  for_each_word(seed, offset, n, [&](int64_t i, uint32_t w) { out[i] = to_unit(w); });
  offset += (uint64_t(n) + 3) / 4 * 4;
}

void Generator::normal(double* out, int64_t n) {
  const double two_pi = 6.283185307179586;
  double u1 = 0;
  for_each_word(seed, offset, (n + 1) / 2 * 2, [&](int64_t i, uint32_t w) {
    if (i % 2 == 0) {
      u1 = to_unit(w);
      return;
    }
    const double u2 = to_unit(w), r = std::sqrt(-2.0 * std::log(1.0 - u1));
    out[i - 1] = r * std::cos(two_pi * u2);
    if (i < n) out[i] = r * std::sin(two_pi * u2);
  });
  offset += (uint64_t(n) + 1) / 2 * 2;
  offset = (offset + 3) / 4 * 4;
}

Tensor uniform(const Shape& shape, double low, double high, Generator& gen, DType dtype, Device device) {
  std::vector<double> values(size_t(numel(shape)));
  gen.uniform(values.data(), int64_t(values.size()));
  for (double& v : values) v = low + (high - low) * v;
  return Tensor::from_vector(values, shape, dtype, device);
}

Tensor randn(const Shape& shape, Generator& gen, DType dtype, Device device, double mean, double stddev) {
  std::vector<double> values(size_t(numel(shape)));
  gen.normal(values.data(), int64_t(values.size()));
  for (double& v : values) v = mean + stddev * v;
  return Tensor::from_vector(values, shape, dtype, device);
}

}  // namespace coil
