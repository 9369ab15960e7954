// Philox4x32-10 (Salmon et al. 2011) as one inline function that compiles for the host and,
// inside CUDA sources, for the device: the generator of core/random.h and the GPU sampling
// kernels (kernels/sampling.h) draw the same words for the same (counter, key).
#pragma once
#include <cstdint>

#include "core/device.h"

namespace coil {

struct PhiloxWords {
  uint32_t w[4];
};

// 4 random words for the 128-bit counter c and the 64-bit key.
COIL_HOST_DEVICE inline PhiloxWords philox4x32_10(PhiloxWords c, uint64_t key) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(M0) * c.w[0], p1 = uint64_t(M1) * c.w[2];
    c = {{uint32_t(p1 >> 32) ^ c.w[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ c.w[3] ^ k1, uint32_t(p0)}};
    k0 += W0;
    k1 += W1;
  }
  return c;
}

// A word's top 24 bits as a float in [0, 1) (exact in f32 and f64).
COIL_HOST_DEVICE inline float philox_unit(uint32_t word) { return float(word >> 8) * (1.0f / 16777216.0f); }

}  // namespace coil
