// Depthwise causal conv1d on CUDA (math in kernels/conv1d.h), channel-last x (batch, length,
// dim). One thread per channel d of one (batch row, segment of kSeg steps): it walks its
// segment in time with the last kMaxK inputs in registers; consecutive threads take
// consecutive channels, so every load and store of a time step is coalesced. The width is
// right-aligned in a zero-padded kMaxK window so that every register index is static.
// Memory traffic: forward reads x and writes out once (plus width-1 halo steps per
// segment); backward reads x and dout once (plus halos), writes dx, and per-segment partial
// sums for dweight and dbias that a second kernel adds in a fixed order (deterministic).
#include <cuda_bf16.h>

#include "core/cuda.h"
#include "kernels/conv1d.h"

namespace coil::kernels::cuda {
namespace {

using bf16_t = __nv_bfloat16;
constexpr int kThreads = 128;
constexpr int kSeg = 128;
constexpr int kMaxK = int(kConv1dMaxWidth);

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16_t x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float x) { return __float2bfloat16(x); }

// The thread's channel, segment and batch row: x[base + t * D] is x[b, t, d].
struct Lane {
  int d;
  int64_t t0, t1, base;
};
__device__ __forceinline__ Lane lane_of(int D, int64_t L) {
  Lane l;
  l.d = blockIdx.x * kThreads + threadIdx.x;
  l.t0 = int64_t(blockIdx.y) * kSeg;
  l.t1 = min(L, l.t0 + kSeg);
  l.base = int64_t(blockIdx.z) * L * D + l.d;
  return l;
}

// wr: weights right-aligned (wr[kMaxK - K + k] = w[d, k]), wl: left-aligned (wl[k] = w[d, k]);
// zeros elsewhere. xw: slot j holds x[t0 - kMaxK + j] (zeros before t = 0 and in the slots
// that the first push moves out of the width), so that after the caller's first push of
// x[t0] the window ends at t0.
template <class T>
__device__ __forceinline__ void init_window(const T* x, const float* w, Lane l, int D, int K, float* wr, float* wl,
                                            float* xw) {
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    const int kr = j - (kMaxK - K);
    wr[j] = kr >= 0 ? w[l.d * K + kr] : 0.f;
    wl[j] = j < K ? w[l.d * K + j] : 0.f;
    const int64_t t = l.t0 - kMaxK + j;
    xw[j] = kr >= 1 && t >= 0 ? to_f(x[l.base + t * D]) : 0.f;
  }
}

__device__ __forceinline__ void push(float* win, float v) {
#pragma unroll
  for (int j = 0; j < kMaxK - 1; ++j) win[j] = win[j + 1];
  win[kMaxK - 1] = v;
}

__device__ __forceinline__ float dot_window(const float* wr, const float* xw, float s) {
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) s = fmaf(wr[j], xw[j], s);
  return s;
}

// out[b, t, d] = act(bias[d] + sum_k w[d, k] x[b, t - (K-1) + k, d]).
template <class T>
__global__ void __launch_bounds__(kThreads) conv1d_forward_kernel(const T* x, const float* w, const float* bias, T* out,
                                                                  int D, int64_t L, int K, bool silu) {
  const Lane l = lane_of(D, L);
  if (l.d >= D) return;
  float wr[kMaxK], wl[kMaxK], xw[kMaxK];
  init_window(x, w, l, D, K, wr, wl, xw);
  const float b = bias ? bias[l.d] : 0.f;
#pragma unroll 8
  for (int64_t t = l.t0; t < l.t1; ++t) {
    push(xw, to_f(x[l.base + t * D]));
    float s = dot_window(wr, xw, b);
    if (silu) s = __fdividef(s, 1.f + __expf(-s));
    out[l.base + t * D] = from_f<T>(s);
  }
}

// g[t] = dout[t] act'(pre[t]) for t in [t0, t1 + K - 1) (pre recomputed from the x window;
// g = 0 past L); dx[t - (K-1)] = sum_k w[k] g[t - k] once g[t] is known; dweight and dbias
// partials over [t0, t1): part[((b nseg + seg) (K + 1) + k) D + d], entry K for dbias.
template <class T>
__global__ void __launch_bounds__(kThreads) conv1d_backward_kernel(const T* go, const T* x, const float* w,
                                                                   const float* bias, T* dx, float* part, int D,
                                                                   int64_t L, int K, bool silu) {
  const Lane l = lane_of(D, L);
  if (l.d >= D) return;
  float wr[kMaxK], wl[kMaxK], xw[kMaxK], gw[kMaxK], acc[kMaxK], accb = 0.f;
  init_window(x, w, l, D, K, wr, wl, xw);
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) gw[j] = acc[j] = 0.f;
  const float b = bias ? bias[l.d] : 0.f;
  const int64_t tend = l.t1 + K - 1;
#pragma unroll 4
  for (int64_t t = l.t0; t < tend; ++t) {
    float gt = 0.f;
    if (t < L) {
      push(xw, to_f(x[l.base + t * D]));
      gt = to_f(go[l.base + t * D]);
      if (silu) {
        const float s = dot_window(wr, xw, b), sg = __fdividef(1.f, 1.f + __expf(-s));
        gt *= sg * (1.f + s * (1.f - sg));
      }
    } else {
      push(xw, 0.f);
    }
    push(gw, gt);
    if (t < l.t1) {
#pragma unroll
      for (int j = 0; j < kMaxK; ++j) acc[j] = fmaf(gt, xw[j], acc[j]);
      accb += gt;
    }
    if (t - (K - 1) >= l.t0) {
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) s = fmaf(wl[k], gw[kMaxK - 1 - k], s);
      dx[l.base + (t - (K - 1)) * D] = from_f<T>(s);
    }
  }
  float* pp = part + (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * (K + 1) * D + l.d;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    const int k = j - (kMaxK - K);
    if (k >= 0) pp[int64_t(k) * D] = acc[j];
  }
  pp[int64_t(K) * D] = accb;
}

// dweight[d, k] = sum_{b, seg} part[((b nseg + seg) (K+1) + k) D + d] in order; dbias from entry K.
__global__ void conv1d_reduce_kernel(const float* part, float* dw, float* db, int64_t nparts, int D, int K) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= D * (K + 1)) return;
  const int k = i / D, d = i % D;
  float s = 0.f;
  for (int64_t q = 0; q < nparts; ++q) s += part[(q * (K + 1) + k) * D + d];
  if (k < K) dw[d * K + k] = s;
  else if (db) db[d] = s;
}

void check_grid(const char* op, const Tensor& x) {
  COIL_CHECK(x.size(0) <= 65535 && (x.size(1) + kSeg - 1) / kSeg <= 65535 && x.size(2) < (int64_t(1) << 31),
             "{}: x {} is too large for the grid (batch <= 65535, length <= 65535 * {}, dim < 2^31)", op, describe(x),
             kSeg);
}

dim3 grid_of(const Tensor& x) {
  return dim3{unsigned((x.size(2) + kThreads - 1) / kThreads), unsigned((x.size(1) + kSeg - 1) / kSeg),
              unsigned(x.size(0))};
}

}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& out) {
  check_grid("conv1d_forward", x);
  const int64_t L = x.size(1);
  const int D = int(x.size(2)), K = int(weight.size(1));
  const dim3 grid = grid_of(x);
  const float* bp = bias.defined() ? bias.data<float>() : nullptr;
  cudaStream_t s = coil::cuda::compute_stream();
  if (x.dtype() == DType::bf16)
    conv1d_forward_kernel<bf16_t><<<grid, kThreads, 0, s>>>(static_cast<const bf16_t*>(x.raw()), weight.data<float>(),
                                                            bp, static_cast<bf16_t*>(out.raw()), D, L, K, silu);
  else
    conv1d_forward_kernel<float><<<grid, kThreads, 0, s>>>(x.data<float>(), weight.data<float>(), bp,
                                                           out.data<float>(), D, L, K, silu);
  COIL_CUDA_CHECK_LAUNCH("conv1d_forward", "x {}, weight {}", describe(x), describe(weight));
}

void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dGrads& g) {
  check_grid("conv1d_backward", x);
  const int64_t L = x.size(1);
  const int D = int(x.size(2)), K = int(weight.size(1));
  const dim3 grid = grid_of(x);
  const int64_t nparts = int64_t(grid.z) * grid.y;
  Tensor part = Tensor::empty({nparts, K + 1, D}, DType::f32, x.device());
  const float* bp = bias.defined() ? bias.data<float>() : nullptr;
  cudaStream_t s = coil::cuda::compute_stream();
  if (x.dtype() == DType::bf16)
    conv1d_backward_kernel<bf16_t><<<grid, kThreads, 0, s>>>(
        static_cast<const bf16_t*>(grad_out.raw()), static_cast<const bf16_t*>(x.raw()), weight.data<float>(), bp,
        static_cast<bf16_t*>(g.dx.raw()), part.data<float>(), D, L, K, silu);
  else
    conv1d_backward_kernel<float><<<grid, kThreads, 0, s>>>(grad_out.data<float>(), x.data<float>(),
                                                            weight.data<float>(), bp, g.dx.data<float>(),
                                                            part.data<float>(), D, L, K, silu);
  COIL_CUDA_CHECK_LAUNCH("conv1d_backward", "x {}, weight {}", describe(x), describe(weight));
  conv1d_reduce_kernel<<<(D * (K + 1) + 255) / 256, 256, 0, s>>>(
      part.data<float>(), g.dweight.data<float>(), g.dbias.defined() ? g.dbias.data<float>() : nullptr, nparts, D, K);
  COIL_CUDA_CHECK_LAUNCH("conv1d_backward/reduce", "x {}, weight {}", describe(x), describe(weight));
}

}  // namespace coil::kernels::cuda
