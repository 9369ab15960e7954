// RoPE on the GPU: one thread per rotated pair (i, i + hd/2) of one head row; v sections of a
// packed qkv are copied by the same threads. Reads x once, writes y once (memory bound).
// Angles in fp32 as the CPU reference: (float)t * inv_freq[i], then sincosf (full precision).
#include <cuda_bf16.h>

#include <cmath>

#include "core/cuda.h"
#include "kernels/rope.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kMaxHalf = 512;  // head dims up to 1024

struct RopeFreqs {
  float inv_freq[kMaxHalf];
};

template <class T>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ y, RopeFreqs f, int64_t rows,
                            int64_t seq, int groups, int rotate_groups, int heads, int half,
                            int64_t offset, const int32_t* positions, float sign) {
  int64_t n = rows * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t row = idx / half;  // (b, t, g, h)
    int i = int(idx % half);
    int64_t bt = row / (int64_t(groups) * heads);
    int g = int((row / heads) % groups);
    int64_t t = bt % seq;
    if (positions) t += positions[bt / seq];
    const T* xr = x + row * 2 * half;
    T* yr = y + row * 2 * half;
    float x1 = float(xr[i]), x2 = float(xr[i + half]);
    if (g >= rotate_groups) {
      yr[i] = T(x1);
      yr[i + half] = T(x2);
      continue;
    }
    float angle = float(t + offset) * f.inv_freq[i];
    float s, c;
    sincosf(angle, &s, &c);
    s *= sign;
    yr[i] = T(x1 * c - x2 * s);
    yr[i + half] = T(x2 * c + x1 * s);
  }
}

}  // namespace

void rope(const RopeProblem& p, const Tensor& x, const Tensor& y) {
  int64_t half = p.head_dim / 2;
  COIL_CHECK(half <= kMaxHalf, "rope: head dim {} exceeds the CUDA limit {}", p.head_dim,
             2 * kMaxHalf);
  RopeFreqs f{};
  for (int64_t i = 0; i < half; ++i)
    f.inv_freq[i] = float(std::pow(p.base, -2.0 * double(i) / double(p.head_dim)));
  int64_t rows = p.batch * p.seq * p.groups * p.heads;
  int64_t n = rows * half;
  int grid = int(std::min<int64_t>((n + 255) / 256, 65536));
  cudaStream_t stream = coil::cuda::compute_stream();
  float sign = p.inverse ? -1.f : 1.f;
  switch (x.dtype()) {
    case DType::f32:
      rope_kernel<<<grid, 256, 0, stream>>>(x.data<float>(), y.data<float>(), f, rows, p.seq,
                                            int(p.groups), int(p.rotate_groups), int(p.heads),
                                            int(half), p.position_offset, p.positions, sign);
      break;
    case DType::bf16:
      rope_kernel<<<grid, 256, 0, stream>>>(static_cast<const __nv_bfloat16*>(x.raw()),
                                            static_cast<__nv_bfloat16*>(y.raw()), f, rows, p.seq,
                                            int(p.groups), int(p.rotate_groups), int(p.heads),
                                            int(half), p.position_offset, p.positions, sign);
      break;
    default: fail("rope: unsupported dtype on the GPU: {}", describe(x));
  }
  COIL_CUDA_CHECK_LAUNCH("rope", "x {}, base {}, inverse {}", describe(x), p.base, p.inverse);
}

}  // namespace coil::kernels::cuda
