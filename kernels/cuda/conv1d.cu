// Depthwise causal conv1d on CUDA (math in kernels/conv1d.h). One block of 256 threads per
// (b, d) row segment of kSeg = 1024 time steps: the segment of x and its halo are staged in
// shared memory (fp32), each thread computes 4 outputs. Memory traffic: forward reads x and
// writes out once (plus a (width-1) halo per segment); backward reads x and dout once (plus
// halos), writes dx, and per-segment partial sums for dweight and dbias that a second kernel
// adds in a fixed order (deterministic).
#include <cuda_bf16.h>

#include "core/cuda.h"
#include "kernels/conv1d.h"

namespace coil::kernels::cuda {
namespace {

using bf16_t = __nv_bfloat16;
constexpr int kThreads = 256;
constexpr int kSeg = 1024;
constexpr int kMaxK = int(kConv1dMaxWidth);

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16_t x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float x) { return __float2bfloat16(x); }

template <class T>
__global__ void __launch_bounds__(kThreads) conv1d_forward_kernel(const T* x, const float* w, const float* bias, T* out,
                                                                  int D, int64_t L, int K, bool silu) {
  __shared__ float sx[kSeg + kMaxK];
  const int64_t row = blockIdx.x, t0 = int64_t(blockIdx.y) * kSeg;
  const int d = int(row % D);
  const T* xr = x + row * L;
  const int halo = K - 1;
  for (int i = threadIdx.x; i < kSeg + halo; i += kThreads) {
    const int64_t t = t0 - halo + i;
    sx[i] = t >= 0 && t < L ? to_f(xr[t]) : 0.f;
  }
  float wk[kMaxK];
  for (int k = 0; k < K; ++k) wk[k] = w[d * K + k];
  const float b = bias ? bias[d] : 0.f;
  __syncthreads();
  for (int i = threadIdx.x; i < kSeg; i += kThreads) {
    const int64_t t = t0 + i;
    if (t >= L) break;
    float s = b;
    for (int k = 0; k < K; ++k) s = fmaf(wk[k], sx[i + k], s);
    if (silu) s = s / (1.f + __expf(-s));
    out[row * L + t] = from_f<T>(s);
  }
}

// Partials: part[(row * nseg + seg) * (K + 1) + k] = sum over the segment of g[t] x[t - (K-1) + k];
// entry K is the sum of g (for dbias).
template <class T>
__global__ void __launch_bounds__(kThreads) conv1d_backward_kernel(const T* go, const T* x, const float* w,
                                                                   const float* bias, T* dx, float* part, int D,
                                                                   int64_t L, int K, bool silu) {
  __shared__ float sx[kSeg + 2 * kMaxK];  // x[t0 - 2(K-1) .. t0 + kSeg + (K-1))
  __shared__ float sg[kSeg + kMaxK];      // g[t0 .. t0 + kSeg + (K-1))
  __shared__ float red[kThreads / 32][kMaxK + 1];
  const int64_t row = blockIdx.x, t0 = int64_t(blockIdx.y) * kSeg;
  const int d = int(row % D), halo = K - 1;
  const T* xr = x + row * L;
  const T* gr = go + row * L;
  for (int i = threadIdx.x; i < kSeg + 3 * halo; i += kThreads) {
    const int64_t t = t0 - 2 * halo + i;
    sx[i] = t >= 0 && t < L ? to_f(xr[t]) : 0.f;
  }
  float wk[kMaxK];
  for (int k = 0; k < K; ++k) wk[k] = w[d * K + k];
  const float b = bias ? bias[d] : 0.f;
  __syncthreads();
  // g at t = t0 + i for i < kSeg + halo: pre from x[t - halo .. t] = sx[i + halo .. i + 2 halo].
  for (int i = threadIdx.x; i < kSeg + halo; i += kThreads) {
    const int64_t t = t0 + i;
    float g = 0.f;
    if (t < L) {
      g = to_f(gr[t]);
      if (silu) {
        float s = b;
        for (int k = 0; k < K; ++k) s = fmaf(wk[k], sx[i + halo + k], s);
        const float sgm = 1.f / (1.f + __expf(-s));
        g *= sgm * (1.f + s * (1.f - sgm));
      }
    }
    sg[i] = g;
  }
  __syncthreads();
  float acc[kMaxK + 1];
  for (int k = 0; k <= kMaxK; ++k) acc[k] = 0.f;
  for (int i = threadIdx.x; i < kSeg; i += kThreads) {
    const int64_t t = t0 + i;
    if (t >= L) break;
    // dx[t] = sum_k w[k] g[t + halo - k]
    float s = 0.f;
    for (int k = 0; k < K; ++k) s = fmaf(wk[k], sg[i + halo - k], s);
    dx[row * L + t] = from_f<T>(s);
    const float g = sg[i];
    for (int k = 0; k < K; ++k) acc[k] = fmaf(g, sx[i + halo + k], acc[k]);
    acc[K] += g;
  }
  // Block sum of acc[0..K] in a fixed order.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int k = 0; k <= K; ++k) {
    float v = acc[k];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) red[warp][k] = v;
  }
  __syncthreads();
  if (threadIdx.x <= K) {
    float s = 0.f;
    for (int wi = 0; wi < kThreads / 32; ++wi) s += red[wi][threadIdx.x];
    part[(row * gridDim.y + blockIdx.y) * (K + 1) + threadIdx.x] = s;
  }
}

// dweight[d, k] = sum_{b, seg} part[((b D + d) nseg + seg) (K+1) + k]; dbias from entry K.
__global__ void conv1d_reduce_kernel(const float* part, float* dw, float* db, int B, int D, int nseg, int K) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= D * (K + 1)) return;
  const int d = i / (K + 1), k = i % (K + 1);
  float s = 0.f;
  for (int b = 0; b < B; ++b)
    for (int sgi = 0; sgi < nseg; ++sgi) s += part[((int64_t(b) * D + d) * nseg + sgi) * (K + 1) + k];
  if (k < K) dw[d * K + k] = s;
  else if (db) db[d] = s;
}

void check_grid(const char* op, const Tensor& x) {
  COIL_CHECK(x.size(0) * x.size(1) < (int64_t(1) << 31) && (x.size(2) + kSeg - 1) / kSeg <= 65535,
             "{}: x {} is too large for the grid (batch * dim < 2^31, length <= 65535 * {})", op, describe(x), kSeg);
}

}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& out) {
  check_grid("conv1d_forward", x);
  const int64_t rows = x.size(0) * x.size(1), L = x.size(2);
  const int D = int(x.size(1)), K = int(weight.size(1));
  const dim3 grid{unsigned(rows), unsigned((L + kSeg - 1) / kSeg)};
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
  const int64_t rows = x.size(0) * x.size(1), L = x.size(2);
  const int B = int(x.size(0)), D = int(x.size(1)), K = int(weight.size(1));
  const int nseg = int((L + kSeg - 1) / kSeg);
  const dim3 grid{unsigned(rows), unsigned(nseg)};
  Tensor part = Tensor::empty({rows, nseg, K + 1}, DType::f32, x.device());
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
      part.data<float>(), g.dweight.data<float>(), g.dbias.defined() ? g.dbias.data<float>() : nullptr, B, D, nseg, K);
  COIL_CUDA_CHECK_LAUNCH("conv1d_backward/reduce", "x {}, weight {}", describe(x), describe(weight));
}

}  // namespace coil::kernels::cuda
