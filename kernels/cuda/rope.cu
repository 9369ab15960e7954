// RoPE on the GPU: the math of kernels/rope.h, the same fp32 angles as the CPU reference
// (kernels/cpu/rope.cpp): float(t + offset) * inv_freq[i], then sincosf (full precision).
#include <algorithm>
#include <cmath>

#include "core/cuda.h"
#include "kernels/cuda/float_access.cuh"
#include "kernels/rope.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kMaxHalf = 512;      // head dims up to 1024
constexpr int kRowsPerThread = 4;  // head rows of one token a thread rotates with one set of angles
constexpr int kThreads = 128;

struct RopeFreqs {
  float inv_freq[kMaxHalf];
};

// A token is `rows` head rows of hd = 2 * half elements (groups x heads); its first `rotated`
// rows (q and k) are rotated, the others (v) copied. Grid: x over (token, unit), y over chunks
// of kRowsPerThread rows. A thread owns the N pairs (i, i + half), i in [u N, u N + N), of its
// chunk's rows: it computes their N angles a = float(t + offset) * inv_freq[i] and sincosf
// once (t: the token's position in its sequence, plus positions[b] where given), then for each
// rotated row y[i] = x[i] cos a - x[i + half] s,  y[i + half] = x[i + half] cos a + x[i] s,
// s = +-sin a (inverse: the backward), and copies the other rows. All of the chunk's loads
// are issued before the first store. N elements are one pack: 16 bytes (8 bf16, 4 f32) where
// half is a multiple of it and x and y are 16-byte aligned, else N = 1 (2- or 4-byte accesses).
// Memory: reads x once and writes y once (2 * numel * sizeof(T) bytes, the floor). sincosf
// runs half times per token and chunk holding rotated rows (1 per 4 rotated pairs, none for
// v-only chunks); the index divisions run once a thread, not once an element.
template <class T, int N>
__global__ void rope_kernel(const T* __restrict__ x, T* __restrict__ y, RopeFreqs f, int64_t tokens,
                            int64_t seq, int rows, int rotated, int half, int64_t offset,
                            const int32_t* __restrict__ positions, float sign) {
  using P = Pack<T, N>;
  const int units = half / N;
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= tokens * units) return;
  const int64_t token = idx / units;
  const int i0 = int(idx - token * units) * N;
  const int row0 = int(blockIdx.y) * kRowsPerThread;
  const int count = min(kRowsPerThread, rows - row0);
  const int64_t at = (token * rows + row0) * 2 * half + i0;
  const T* xr = x + at;
  T* yr = y + at;

  P lo[kRowsPerThread], hi[kRowsPerThread];  // x[i0 .. i0 + N) and x[half + i0 ..) of each row
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r)
    if (r < count) {
      lo[r] = *reinterpret_cast<const P*>(xr + r * 2 * half);
      hi[r] = *reinterpret_cast<const P*>(xr + r * 2 * half + half);
    }

  float c[N], s[N];
  if (row0 < rotated) {
    const int64_t b = token / seq;
    const int64_t t = token - b * seq + offset + (positions ? positions[b] : 0);
#pragma unroll
    for (int j = 0; j < N; ++j) {
      sincosf(float(t) * f.inv_freq[i0 + j], &s[j], &c[j]);
      s[j] *= sign;
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r)
    if (r < count) {
      P out_lo = lo[r], out_hi = hi[r];
      if (row0 + r < rotated) {
#pragma unroll
        for (int j = 0; j < N; ++j) {
          const float x1 = to_f(lo[r].v[j]), x2 = to_f(hi[r].v[j]);
          out_lo.v[j] = from_f<T>(x1 * c[j] - x2 * s[j]);
          out_hi.v[j] = from_f<T>(x2 * c[j] + x1 * s[j]);
        }
      }
      *reinterpret_cast<P*>(yr + r * 2 * half) = out_lo;
      *reinterpret_cast<P*>(yr + r * 2 * half + half) = out_hi;
    }
}

template <class T, int N>
void launch(const RopeProblem& p, const RopeFreqs& f, const T* x, T* y) {
  const int64_t half = p.head_dim / 2, tokens = p.batch * p.seq, rows = p.groups * p.heads;
  const int64_t blocks = (tokens * (half / N) + kThreads - 1) / kThreads;
  const int64_t chunks = (rows + kRowsPerThread - 1) / kRowsPerThread;
  COIL_CHECK(blocks < (int64_t(1) << 31) && chunks <= 65535,
             "rope: {} tokens of {} head rows exceed the CUDA grid ({} x {} blocks)", tokens, rows, blocks,
             chunks);
  rope_kernel<T, N><<<dim3(unsigned(blocks), unsigned(chunks)), kThreads, 0, coil::cuda::compute_stream()>>>(
      x, y, f, tokens, p.seq, int(rows), int(p.rotate_groups * p.heads), int(half), p.position_offset,
      p.positions, p.inverse ? -1.f : 1.f);
}

}  // namespace

void rope(const RopeProblem& p, const Tensor& x, const Tensor& y) {
  const int64_t half = p.head_dim / 2;
  COIL_CHECK(half <= kMaxHalf, "rope: head dim {} exceeds the CUDA limit {}", p.head_dim, 2 * kMaxHalf);
  RopeFreqs f{};
  for (int64_t i = 0; i < half; ++i)
    f.inv_freq[i] = float(std::pow(p.base, -2.0 * double(i) / double(p.head_dim)));
  dispatch_gpu_float("rope", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    constexpr int kPack = Pack<T>::n;
    const T* xp = static_cast<const T*>(x.raw());
    T* yp = static_cast<T*>(y.raw());
    if (half % kPack == 0 && aligned16(xp) && aligned16(yp))
      launch<T, kPack>(p, f, xp, yp);
    else
      launch<T, 1>(p, f, xp, yp);
  });
  COIL_CUDA_CHECK_LAUNCH("rope", "x {}, base {}, inverse {}", describe(x), p.base, p.inverse);
}

}  // namespace coil::kernels::cuda
