#include "core/random.h"

#include <cmath>

namespace coil {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, uint64_t key) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(M0) * c[0], p1 = uint64_t(M1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k1, uint32_t(p0)};
    k0 += W0;
    k1 += W1;
  }
  return c;
}

namespace {
// Word i of the stream (seed, offset): block (offset + i) / 4, lane (offset + i) % 4.
uint32_t stream_word(uint64_t seed, uint64_t position) {
  uint64_t block = position / 4;
  auto r = philox4x32({uint32_t(block), uint32_t(block >> 32), 0, 0}, seed);
  return r[position % 4];
}
double to_unit(uint32_t w) { return (w >> 8) * (1.0 / 16777216.0); }  // 24 bits: exact in f32
}  // namespace

uint32_t Generator::next_u32() { return stream_word(seed, offset++); }

uint64_t Generator::next_below(uint64_t bound) {
  uint64_t hi = next_u32(), lo = next_u32();
  return ((hi << 32) | lo) % bound;
}

void Generator::uniform(double* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = to_unit(stream_word(seed, offset + uint64_t(i)));
  offset += (uint64_t(n) + 3) / 4 * 4;
}

void Generator::normal(double* out, int64_t n) {
  const double two_pi = 6.283185307179586;
  for (int64_t i = 0; i < n; i += 2) {
    double u1 = to_unit(stream_word(seed, offset + uint64_t(i)));
    double u2 = to_unit(stream_word(seed, offset + uint64_t(i) + 1));
    double r = std::sqrt(-2.0 * std::log(1.0 - u1));
    out[i] = r * std::cos(two_pi * u2);
    if (i + 1 < n) out[i + 1] = r * std::sin(two_pi * u2);
  }
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
