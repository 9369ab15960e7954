// Counter-based randomness (Philox4x32-10, Salmon et al. 2011). The value at position i of a
// stream depends only on (seed, offset + i), so the same seed gives the same numbers on every
// device and for every way of splitting the work. A generator's whole state is two integers,
// which a checkpoint stores.
//
// Tensors are filled on the host and copied to their device: initialization happens once per
// run, and this keeps CPU and GPU initializations identical by construction.
#pragma once
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace coil {

// Philox4x32 with 10 rounds: 4 random 32-bit words for a 128-bit counter and a 64-bit key.
std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, uint64_t key);

struct Generator {
  uint64_t seed = 0;
  uint64_t offset = 0;  // 32-bit words consumed so far, rounded up to blocks of 4

  explicit Generator(uint64_t seed = 0, uint64_t offset = 0) : seed(seed), offset(offset) {}
  // Fills out[0..n) with uniform floats in [0, 1) and advances the offset.
  void uniform(double* out, int64_t n);
  // Standard normals by Box-Muller on pairs of uniforms.
  void normal(double* out, int64_t n);
  uint32_t next_u32();
  uint64_t next_below(uint64_t bound);  // uniform integer in [0, bound)
};

Tensor uniform(const Shape& shape, double low, double high, Generator& gen,
               DType dtype = DType::f32, Device device = Device::cpu());
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::f32,
             Device device = Device::cpu(), double mean = 0.0, double stddev = 1.0);

}  // namespace coil
