#include <cuda_bf16.h>

#include <initializer_list>
#include <type_traits>

#include "core/cuda.h"
#include "kernels/norm.h"

#include "kernels/cuda/block_reduce.cuh"

namespace coil::kernels::cuda {
namespace {

// V consecutive elements at p as floats: 16-byte loads when V elements span whole packs (the
// caller guarantees alignment), else scalar loads (V == 1).
template <int V, class T>
__device__ __forceinline__ void load_v(const T* p, float (&out)[V]) {
  if constexpr (V * sizeof(T) >= 16) {
    constexpr int P = Pack<T>::n;
#pragma unroll
    for (int q = 0; q < V / P; ++q) {
      Pack<T> pk = reinterpret_cast<const Pack<T>*>(p)[q];
#pragma unroll
      for (int j = 0; j < P; ++j) out[q * P + j] = to_f(pk.v[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = to_f(p[j]);
  }
}
template <int V, class T>
__device__ __forceinline__ void store_v(T* p, const float (&in)[V]) {
  if constexpr (V * sizeof(T) >= 16) {
    constexpr int P = Pack<T>::n;
#pragma unroll
    for (int q = 0; q < V / P; ++q) {
      Pack<T> pk;
#pragma unroll
      for (int j = 0; j < P; ++j) pk.v[j] = from_f<T>(in[q * P + j]);
      reinterpret_cast<Pack<T>*>(p)[q] = pk;
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = from_f<T>(in[j]);
  }
}

// weight and bias: f32 or the activation dtype, read through the cache.
__device__ __forceinline__ float load_param(const void* p, bool f32, int64_t i) {
  return f32 ? __ldg(static_cast<const float*>(p) + i) : __bfloat162float(static_cast<const bf16_t*>(p)[i]);
}
template <int V>
__device__ __forceinline__ void load_params(const void* p, bool f32, int64_t c, float (&out)[V]) {
  if (f32)
    load_v<V>(static_cast<const float*>(p) + c, out);
  else
    load_v<V>(static_cast<const bf16_t*>(p) + c, out);
}

// The warp-per-row kernels (rows that fit a warp's registers): lane l owns the units of kUnit
// columns l, l + 32, ..., at most U of them; kRowWarps rows (warps) a block.
constexpr int kUnit = 8;  // 16 bytes of bf16, 32 of f32
constexpr int kRowWarps = 4;
constexpr int kMaxForwardUnits = 8, kMaxBackwardUnits = 4;  // D up to 2048 and 1024

// Forward, one warp per row, the row in registers: one read of x (+ residual), the
// statistics by warp shuffles (layer norm: the mean, then the centred second moment from the
// registers: two-pass, no cancellation), one write of y (+ r in fp32). DRAM traffic per
// element: x (+ residual in, r out in fp32) + y; weight and bias come from L1/L2.
template <class T, int U>
__global__ void __launch_bounds__(kRowWarps * 32)
    norm_forward_warp_kernel(const T* __restrict__ x, const float* __restrict__ res, float* __restrict__ rout,
                             const void* w, const void* b, bool param_f32, T* __restrict__ y, float* mean_out,
                             float* rstd_out, int64_t rows, int64_t D, float eps, bool rms) {
  const int lane = threadIdx.x & 31;
  const int64_t row = int64_t(blockIdx.x) * kRowWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t off = row * D;
  auto col = [&](int u) { return (int64_t(lane) + 32 * u) * kUnit; };
  float r[U][kUnit], q[U][kUnit];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (col(u) >= D) continue;
    load_v<kUnit>(x + off + col(u), r[u]);
    if (res) load_v<kUnit>(res + off + col(u), q[u]);
  }
  float s = 0.f;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (col(u) >= D) continue;
#pragma unroll
    for (int j = 0; j < kUnit; ++j) {
      if (res) r[u][j] += q[u][j];
      s += rms ? r[u][j] * r[u][j] : r[u][j];
    }
    if (rout) store_v<kUnit>(rout + off + col(u), r[u]);
  }
  s = warp_sum(s);
  float mean = 0.f, var;
  if (rms) {
    var = s / float(D);
  } else {
    mean = s / float(D);
    float v = 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (col(u) >= D) continue;
#pragma unroll
      for (int j = 0; j < kUnit; ++j) v += (r[u][j] - mean) * (r[u][j] - mean);
    }
    var = warp_sum(v) / float(D);
  }
  const float rstd = rsqrtf(var + eps);
  if (lane == 0) {
    if (mean_out) mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
#pragma unroll
  for (int u = 0; u < U; ++u) {
    if (col(u) >= D) continue;
    float wv[kUnit], bv[kUnit] = {};
    load_params<kUnit>(w, param_f32, col(u), wv);
    if (b) load_params<kUnit>(b, param_f32, col(u), bv);
#pragma unroll
    for (int j = 0; j < kUnit; ++j) r[u][j] = (r[u][j] - mean) * rstd * wv[j] + bv[j];
    store_v<kUnit>(y + off + col(u), r[u]);
  }
}

// Backward, one warp per row over rows warp, warp + (the grid's warps), ...: lane l owns the
// same units in every row and keeps their dweight and dbias sums (dy * xhat, dy) in registers.
// Per row: one read of dy, r (and d residual') into registers, the two row sums by warp
// shuffles, one write of dx (and d residual). At the end the block's warps add their sums into
// shared memory in warp order and the block writes its partial row [2][D], summed over the
// blocks by norm_param_grad_kernel (deterministic: rows per warp and orders are fixed).
// DRAM traffic per element: dy + r (+ d residual' in) + dx (+ d residual out); the partials
// add 2 D floats per block (a grid of what fits the GPU at once).
template <class T, class R, int U>
__global__ void __launch_bounds__(kRowWarps * 32)
    norm_backward_warp_kernel(const T* __restrict__ dy, const R* __restrict__ in, const float* __restrict__ dres_out,
                              const float* mean, const float* rstd, const void* w, bool param_f32,
                              T* __restrict__ dx, float* __restrict__ dres, float* partial, int64_t rows,
                              int64_t D, bool rms) {
  extern __shared__ float acc[];  // [2][D]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  auto col = [&](int u) { return (int64_t(lane) + 32 * u) * kUnit; };
  float aw[U][kUnit] = {}, ab[U][kUnit] = {};
  for (int64_t row = int64_t(blockIdx.x) * kRowWarps + warp; row < rows; row += int64_t(gridDim.x) * kRowWarps) {
    const int64_t off = row * D;
    float g[U][kUnit], r[U][kUnit], d[U][kUnit] = {};
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (col(u) >= D) continue;
      load_v<kUnit>(dy + off + col(u), g[u]);
      load_v<kUnit>(in + off + col(u), r[u]);
      if (dres_out) load_v<kUnit>(dres_out + off + col(u), d[u]);
    }
    const float mu = rms ? 0.f : mean[row], rs = rstd[row];
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (col(u) >= D) continue;
      float wv[kUnit];
      load_params<kUnit>(w, param_f32, col(u), wv);
#pragma unroll
      for (int j = 0; j < kUnit; ++j) {
        const float xhat = (r[u][j] - mu) * rs, gw = g[u][j] * wv[j];
        aw[u][j] += g[u][j] * xhat;
        ab[u][j] += g[u][j];
        sg += gw;
        sgx += gw * xhat;
        r[u][j] = xhat;
        g[u][j] = gw;
      }
    }
    const float c1 = warp_sum(sgx) / float(D);
    const float c2 = rms ? 0.f : warp_sum(sg) / float(D);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (col(u) >= D) continue;
#pragma unroll
      for (int j = 0; j < kUnit; ++j) d[u][j] += rs * (g[u][j] - c2 - r[u][j] * c1);
      store_v<kUnit>(dx + off + col(u), d[u]);
      if (dres) store_v<kUnit>(dres + off + col(u), d[u]);
    }
  }
  for (int k = 0; k < kRowWarps; ++k) {
    if (warp == k)
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (col(u) >= D) continue;
#pragma unroll
        for (int j = 0; j < kUnit; ++j) {
          const int64_t c = col(u) + j;
          acc[c] = (k ? acc[c] : 0.f) + aw[u][j];
          acc[D + c] = (k ? acc[D + c] : 0.f) + ab[u][j];
        }
      }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < 2 * D; i += blockDim.x) partial[int64_t(blockIdx.x) * 2 * D + i] = acc[i];
}


// Rows too long or too odd for the warp kernels.
// Forward, one block per row; thread t owns the groups of V elements t, t + blockDim, ...
// Pass 1 reads x (+ residual) and writes r (fused variants); layer norm's second pass reads r
// again for the variance (two-pass, no cancellation); the last pass writes y. The re-reads hit
// L1/L2: DRAM traffic per element is x (+ residual in, residual out in fp32) + y.
template <class T, int V>
__device__ void norm_forward_row(const T* x, const float* res, float* rout, const void* w,
                                 const void* b, bool param_f32, T* y, float* mean_out,
                                 float* rstd_out, int64_t D, float eps, bool rms, float* smem) {
  const int64_t groups = D / V;
  auto load_r = [&](int64_t k, float(&r)[V], bool first) {
    if (rout && !first) {
      load_v<V>(rout + k * V, r);
      return;
    }
    load_v<V>(x + k * V, r);
    if (res) {
      float q[V];
      load_v<V>(res + k * V, q);
#pragma unroll
      for (int j = 0; j < V; ++j) r[j] += q[j];
    }
    if (rout) store_v<V>(rout + k * V, r);
  };
  float s = 0.f;
  for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
    float r[V];
    load_r(k, r, true);
#pragma unroll
    for (int j = 0; j < V; ++j) s += rms ? r[j] * r[j] : r[j];
  }
  s = block_sum(s, smem);
  float mean = 0.f, var;
  if (rms) {
    var = s / float(D);
  } else {
    mean = s / float(D);
    float q = 0.f;
    for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
      float r[V];
      load_r(k, r, false);
#pragma unroll
      for (int j = 0; j < V; ++j) q += (r[j] - mean) * (r[j] - mean);
    }
    var = block_sum(q, smem) / float(D);
  }
  const float rstd = rsqrtf(var + eps);
  if (threadIdx.x == 0) {
    if (mean_out) *mean_out = mean;
    *rstd_out = rstd;
  }
  for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
    float r[V], o[V];
    load_r(k, r, false);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      int64_t c = k * V + j;
      o[j] = (r[j] - mean) * rstd * load_param(w, param_f32, c) + (b ? load_param(b, param_f32, c) : 0.f);
    }
    store_v<V>(y + k * V, o);
  }
}

template <class T>
__global__ void norm_forward_kernel(const T* x, const float* res, float* rout, const void* w,
                                    const void* b, bool param_f32, T* y, float* mean, float* rstd,
                                    int64_t D, float eps, bool rms, bool vec) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x, off = row * D;
  float* mp = mean ? mean + row : nullptr;
  constexpr int V = Pack<T>::n;
  if (vec)
    norm_forward_row<T, V>(x + off, res ? res + off : nullptr, rout ? rout + off : nullptr, w, b,
                           param_f32, y + off, mp, rstd + row, D, eps, rms, smem);
  else
    norm_forward_row<T, 1>(x + off, res ? res + off : nullptr, rout ? rout + off : nullptr, w, b,
                           param_f32, y + off, mp, rstd + row, D, eps, rms, smem);
}

// Backward (rows too long or too odd for the warp kernels): block b handles rows b, b + gridDim, ...; thread t owns the same groups of columns
// in every row and adds dy * xhat and dy for them into the block's accumulator (shared memory
// when 2 D floats fit, else the block's own row of the global partials), laid out as
// [2][V][groups] so that a warp's accesses are consecutive. Per row: pass 1 reads dy, r for
// the two row sums, pass 2 reads them again (L1/L2) and writes dx (and d residual).
// DRAM traffic per element: dy + r (+ d residual' in) + dx (+ d residual out).
template <class T, class R, int V>
__device__ void norm_backward_rows(const T* dy, const R* in, const float* dres_out, const float* mean,
                                   const float* rstd, const void* w, bool param_f32, T* dx,
                                   float* dres, float* acc, int64_t rows, int64_t D, bool rms,
                                   float* smem) {
  const int64_t groups = D / V;
  for (int64_t k = threadIdx.x; k < groups; k += blockDim.x)
#pragma unroll
    for (int j = 0; j < 2 * V; ++j) acc[j * groups + k] = 0.f;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * D;
    const float mu = rms ? 0.f : mean[row], rs = rstd[row];
    float sg = 0.f, sgx = 0.f;
    for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
      float g[V], r[V];
      load_v<V>(dy + off + k * V, g);
      load_v<V>(in + off + k * V, r);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float xhat = (r[j] - mu) * rs, gw = g[j] * load_param(w, param_f32, k * V + j);
        sg += gw;
        sgx += gw * xhat;
        acc[j * groups + k] += g[j] * xhat;
        acc[(V + j) * groups + k] += g[j];
      }
    }
    const float c1 = block_sum(sgx, smem) / float(D);
    const float c2 = rms ? 0.f : block_sum(sg, smem) / float(D);
    for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
      float g[V], r[V], d[V];
      load_v<V>(dy + off + k * V, g);
      load_v<V>(in + off + k * V, r);
      if (dres_out) load_v<V>(dres_out + off + k * V, d);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float xhat = (r[j] - mu) * rs, gw = g[j] * load_param(w, param_f32, k * V + j);
        d[j] = rs * (gw - c2 - xhat * c1) + (dres_out ? d[j] : 0.f);
      }
      store_v<V>(dx + off + k * V, d);
      if (dres) store_v<V>(dres + off + k * V, d);
    }
  }
}

template <class T, class R>
__global__ void norm_backward_kernel(const T* dy, const R* in, const float* dres_out, const float* mean,
                                     const float* rstd, const void* w, bool param_f32, T* dx,
                                     float* dres, float* partial, int64_t rows, int64_t D, bool rms,
                                     bool vec, bool acc_in_smem) {
  extern __shared__ float dyn[];
  __shared__ float smem[32];
  float* own = partial + int64_t(blockIdx.x) * 2 * D;
  float* acc = acc_in_smem ? dyn : own;
  constexpr int V = Pack<T>::n;
  if (vec)
    norm_backward_rows<T, R, V>(dy, in, dres_out, mean, rstd, w, param_f32, dx, dres, acc, rows, D, rms, smem);
  else
    norm_backward_rows<T, R, 1>(dy, in, dres_out, mean, rstd, w, param_f32, dx, dres, acc, rows, D, rms, smem);
  if (acc_in_smem)  // each thread copies the entries it owns: no barrier needed
    for (int64_t k = threadIdx.x; k < D / (vec ? V : 1); k += blockDim.x)
      for (int j = 0; j < 2 * (vec ? V : 1); ++j) {
        int64_t i = j * (D / (vec ? V : 1)) + k;
        own[i] = dyn[i];
      }
}

// dweight[c], dbias[c]: the blocks' partials [blocks][2][D] summed in a fixed order
// (deterministic). A block of 32 x 8 threads takes 32 columns; thread (c, y) sums partial rows
// y, y + 8, ... of its column, then the 8 sums are added in order. Column c = k * V + j of the
// block-per-row backward sits at j * (D / V) + k of its half (V = 1: in place).
__global__ void norm_param_grad_kernel(const float* partial, int blocks, int64_t D, int V, void* dw,
                                       void* db, bool param_f32) {
  __shared__ float sw[8][33], sb[8][33];
  const int64_t c = blockIdx.x * int64_t(32) + threadIdx.x;
  float a = 0.f, z = 0.f;
  if (c < D) {
    const int64_t i = (c % V) * (D / V) + c / V;
    for (int p = threadIdx.y; p < blocks; p += 8) {
      a += partial[int64_t(p) * 2 * D + i];
      if (db) z += partial[int64_t(p) * 2 * D + D + i];
    }
  }
  sw[threadIdx.y][threadIdx.x] = a;
  sb[threadIdx.y][threadIdx.x] = z;
  __syncthreads();
  if (threadIdx.y != 0 || c >= D) return;
  for (int y = 1; y < 8; ++y) {
    a += sw[y][threadIdx.x];
    z += sb[y][threadIdx.x];
  }
  if (param_f32) {
    static_cast<float*>(dw)[c] = a;
    if (db) static_cast<float*>(db)[c] = z;
  } else {
    static_cast<bf16_t*>(dw)[c] = __float2bfloat16(a);
    if (db) static_cast<bf16_t*>(db)[c] = __float2bfloat16(z);
  }
}

// Null pointers count as aligned.
bool aligned16(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (reinterpret_cast<uintptr_t>(p) & 15) return false;
  return true;
}

// One thread per group of V columns (a warp at least, 1024 at most).
int threads_for(int64_t groups) {
  int64_t t = (groups + 31) / 32 * 32;
  return int(std::min<int64_t>(std::max<int64_t>(t, 32), 1024));
}

// Units of kUnit columns per lane for the warp-per-row kernels, or 0 when D is not a multiple
// of kUnit.
int64_t lane_units(int64_t D) { return D % kUnit ? 0 : (D / kUnit + 31) / 32; }

// f(std::integral_constant<int, U>()) for the smallest U of 1, 2, 3, 4, 6, 8 (up to Max) with
// U >= n; the caller ensures n <= Max.
template <int Max, class F>
void with_units(int64_t n, F&& f) {
  if (n <= 1) return f(std::integral_constant<int, 1>());
  if (n <= 2) return f(std::integral_constant<int, 2>());
  if (n <= 3) return f(std::integral_constant<int, 3>());
  if constexpr (Max <= 4) {
    return f(std::integral_constant<int, 4>());
  } else {
    if (n <= 4) return f(std::integral_constant<int, 4>());
    if (n <= 6) return f(std::integral_constant<int, 6>());
    return f(std::integral_constant<int, 8>());
  }
}

template <class T>
void forward_typed(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                   double eps, bool rms, const NormForward& out) {
  const int64_t D = x.size(-1), rows = x.numel() / D;
  const T* xp = static_cast<const T*>(x.raw());
  const float* rp = residual.defined() ? residual.data<float>() : nullptr;
  float* op = out.residual.defined() ? out.residual.data<float>() : nullptr;
  T* yp = static_cast<T*>(out.y.raw());
  const void* wp = weight.raw();
  const void* bp = bias.defined() ? bias.raw() : nullptr;
  const bool pf32 = weight.dtype() == DType::f32;
  float* mp = out.mean.defined() ? out.mean.data<float>() : nullptr;
  float* sp = out.rstd.data<float>();
  COIL_CHECK(rows < (int64_t(1) << 31), "norm: {} rows exceed the grid", rows);
  cudaStream_t stream = coil::cuda::compute_stream();
  const int64_t lu = lane_units(D);
  if (lu > 0 && lu <= kMaxForwardUnits && aligned16({xp, yp, rp, op, wp, bp})) {
    with_units<kMaxForwardUnits>(lu, [&](auto u) {
      norm_forward_warp_kernel<T, decltype(u)::value>
          <<<unsigned((rows + kRowWarps - 1) / kRowWarps), kRowWarps * 32, 0, stream>>>(
              xp, rp, op, wp, bp, pf32, yp, mp, sp, rows, D, float(eps), rms);
    });
  } else {
    constexpr int V = Pack<T>::n;
    bool vec = D % V == 0 && aligned16({xp, yp, rp, op});
    norm_forward_kernel<T><<<unsigned(rows), threads_for(vec ? D / V : D), 0, stream>>>(
        xp, rp, op, wp, bp, pf32, yp, mp, sp, D, float(eps), rms, vec);
  }
  COIL_CUDA_CHECK_LAUNCH("norm_forward", "x {}, residual {}, weight {}, rms {}", describe(x),
                         describe(residual), describe(weight), rms);
}

template <class T, class R>
void backward_typed(const Tensor& grad_y, const Tensor& input, const Tensor& mean, const Tensor& rstd,
                    const Tensor& weight, const Tensor& grad_residual_out, bool rms, const NormBackward& out) {
  const int64_t D = input.size(-1), rows = input.numel() / D;
  const T* gp = static_cast<const T*>(grad_y.raw());
  const R* ip = static_cast<const R*>(input.raw());
  const float* dro = grad_residual_out.defined() ? grad_residual_out.data<float>() : nullptr;
  T* dxp = static_cast<T*>(out.dx.raw());
  float* drp = out.dresidual.defined() ? out.dresidual.data<float>() : nullptr;
  const void* wp = weight.raw();
  const bool pf32 = weight.dtype() == DType::f32;
  const float* mp = rms ? nullptr : mean.data<float>();
  const float* sp = rstd.data<float>();
  cudaStream_t stream = coil::cuda::compute_stream();
  const int64_t lu = lane_units(D);
  Tensor partial;
  int blocks = 0, V = 1;  // the partials' column layout (see norm_param_grad_kernel)
  if (lu > 0 && lu <= kMaxBackwardUnits && aligned16({gp, ip, dro, dxp, drp, wp})) {
    with_units<kMaxBackwardUnits>(lu, [&](auto u) {
      auto* kernel = norm_backward_warp_kernel<T, R, decltype(u)::value>;
      const size_t smem = size_t(2 * D) * sizeof(float);
      int per_sm = 0;
      COIL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowWarps * 32, smem));
      blocks = int(std::min<int64_t>((rows + kRowWarps - 1) / kRowWarps,
                                     int64_t(std::max(per_sm, 1)) * coil::cuda::multiprocessor_count()));
      blocks = std::max(blocks, 1);
      partial = Tensor::empty({blocks, 2 * D}, DType::f32, input.device());
      kernel<<<blocks, kRowWarps * 32, smem, stream>>>(gp, ip, dro, mp, sp, wp, pf32, dxp, drp,
                                                       partial.data<float>(), rows, D, rms);
    });
  } else {
    constexpr int P = Pack<T>::n;
    const bool vec = D % P == 0 && aligned16({gp, ip, dxp, dro, drp});
    V = vec ? P : 1;
    blocks = int(std::min<int64_t>(std::max<int64_t>(rows, 1), int64_t(coil::cuda::multiprocessor_count()) * 16));
    const size_t smem = size_t(2 * D) * sizeof(float);
    const bool in_smem = smem <= 48 * 1024;
    partial = Tensor::empty({blocks, 2 * D}, DType::f32, input.device());
    norm_backward_kernel<T, R><<<blocks, threads_for(D / V), in_smem ? smem : 0, stream>>>(
        gp, ip, dro, mp, sp, wp, pf32, dxp, drp, partial.data<float>(), rows, D, rms, vec, in_smem);
  }
  COIL_CUDA_CHECK_LAUNCH("norm_backward", "dy {}, input {}, weight {}, rms {}", describe(grad_y),
                         describe(input), describe(weight), rms);
  norm_param_grad_kernel<<<unsigned((D + 31) / 32), dim3(32, 8), 0, stream>>>(
      partial.data<float>(), blocks, D, V, out.dweight.raw(), out.dbias.defined() ? out.dbias.raw() : nullptr,
      out.dweight.dtype() == DType::f32);
  COIL_CUDA_CHECK_LAUNCH("norm_param_grad", "D {}, blocks {}", D, blocks);
}

}  // namespace

void norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, bool rms, const NormForward& out) {
  switch (x.dtype()) {
    case DType::f32: return forward_typed<float>(x, residual, weight, bias, eps, rms, out);
    case DType::bf16: return forward_typed<bf16_t>(x, residual, weight, bias, eps, rms, out);
    default: fail("norm: the GPU takes f32 or bf16, got {}", describe(x));
  }
}

void norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& mean, const Tensor& rstd,
                   const Tensor& weight, const Tensor& grad_residual_out, bool rms, const NormBackward& out) {
  DType t = out.dx.dtype(), r = input.dtype();
  if (t == DType::f32 && r == DType::f32)
    return backward_typed<float, float>(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out);
  if (t == DType::bf16 && r == DType::bf16)
    return backward_typed<bf16_t, bf16_t>(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out);
  if (t == DType::bf16 && r == DType::f32)
    return backward_typed<bf16_t, float>(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out);
  fail("norm_backward: the GPU takes f32 or bf16 gradients with f32 or bf16 inputs, got {} and {}",
       describe(grad_y), describe(input));
}

}  // namespace coil::kernels::cuda
