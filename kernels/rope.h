// Rotary position embedding (RoPE), GPT-NeoX / Llama half-split convention: within each head
// of dimension hd the pairs (i, i + hd/2), i < hd/2, are rotated by the angle
//   a(t, i) = (positions[b] + t + position_offset) * base^(-2i/hd)   (positions: optional, per row)
//   y[i] = x[i] cos a - x[i + hd/2] sin a;   y[i + hd/2] = x[i + hd/2] cos a + x[i] sin a.
// The backward is the rotation by -a (rope with inverse = true).
//
// Shapes (token-major, as attention takes them):
//   (B, T, H, hd)      every head is rotated
//   (B, T, 3, H, hd)   a packed qkv: q and k (sections 0 and 1) are rotated, v is copied
// Angles are computed in fp32 as (float)t * inv_freq[i] with inv_freq from the base in double,
// the same on the CPU and the GPU. CPU: f32, f64; CUDA: f32, bf16 (fp32 math).
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

struct RopeOptions {
  double base = 10000.0;        // theta
  int64_t position_offset = 0;  // position of token 0 (generation with a cache)
  // Optional (B) i32 on x's device: row b's token 0 is at positions[b] + position_offset
  // (decoding rows of different lengths: the positions live on the device, so a captured
  // CUDA graph reads them at each replay).
  Tensor positions;
};

// Returns the rotated tensor (a new buffer). inverse: rotate by -angle (the backward).
Tensor rope(const Tensor& x, const RopeOptions& options = {}, bool inverse = false);
// dx from dy: rope(dy, options, inverse = true).
Tensor rope_backward(const Tensor& grad, const RopeOptions& options = {});

// Raw problem: rows of `groups` groups of H heads of hd; groups < rotate_groups are rotated,
// the others copied (packed qkv: groups 3, rotate_groups 2).
struct RopeProblem {
  int64_t batch = 0, seq = 0, groups = 1, rotate_groups = 1, heads = 0, head_dim = 0;
  int64_t position_offset = 0;
  const int32_t* positions = nullptr;  // per batch row (x's device), or null
  double base = 10000.0;
  bool inverse = false;
};

namespace cpu {
void rope(const RopeProblem& p, const Tensor& x, const Tensor& y);
}
namespace cuda {
void rope(const RopeProblem& p, const Tensor& x, const Tensor& y);
}

}  // namespace coil::kernels
