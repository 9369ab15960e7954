#include <cuda_bf16.h>

#include "core/cuda.h"
#include "kernels/softmax.h"

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/row_cache.cuh"

namespace coil::kernels::cuda {
namespace {

// One block per row of `cols` elements, read as units of N elements (a 16-byte pack, or 1).
// Forward: pass 1 loads the row (online max m and sum s of exp(x - m)) and caches it in
// shared memory, pass 2 writes y = exp(x - m) / s (or x - m - log s) from the cache.
// DRAM traffic per row: read cols, write cols elements, plus the uncached tail read again
// (none for bf16 rows up to 55k elements; f32 rows past 27k re-read the rest, mostly from L2).
template <class T, int N>
__global__ void __launch_bounds__(kRowThreads, 2)
    softmax_forward_kernel(const T* x, T* y, int64_t cols, bool log, int64_t cached) {
  using U = Pack<T, N>;
  extern __shared__ float4 row_smem[];
  __shared__ float sm[32], ss[32];
  U* cache = reinterpret_cast<U*>(row_smem);
  const int64_t units = cols / N, off = int64_t(blockIdx.x) * cols;
  const U* xr = reinterpret_cast<const U*>(x + off);
  U* yr = reinterpret_cast<U*>(y + off);
  float m = -INFINITY, s = 0.f;
  visit_row<kRowBatch, false>(xr, (const U*)nullptr, units, cache, (U*)nullptr, cached, true,
            [&](int64_t, const U& u, const U&) { add_ms(m, s, u); });
  block_ms(m, s, sm, ss);
  const float log_s = logf(s), inv_s = 1.f / s;
  visit_row<kRowBatch, false>(xr, (const U*)nullptr, units, cache, (U*)nullptr, cached, false, [&](int64_t k, const U& u, const U&) {
    U o;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float v = to_f(u.v[j]);
      o.v[j] = from_f<T>(log ? v - m - log_s : __expf(v - m) * inv_s);
    }
    yr[k] = o;
  });
}

// Backward, one block per row: pass 1 loads dy and y (caching them) for the row sum
// (sum dy*y, or sum dy for log-softmax), pass 2 writes dx from the caches. DRAM traffic per
// row: read 2 cols, write cols elements, plus the uncached tails read again (two bf16 rows
// share the cache: past 27k elements the rest is re-read, mostly from L2).
template <class T, int N>
__global__ void __launch_bounds__(kRowThreads, 2)
    softmax_backward_kernel(const T* g, const T* y, T* dx, int64_t cols, bool log, int64_t cached) {
  using U = Pack<T, N>;
  extern __shared__ float4 row_smem[];
  __shared__ float sm[32];
  U* cache_g = reinterpret_cast<U*>(row_smem);
  U* cache_y = cache_g + cached;
  const int64_t units = cols / N, off = int64_t(blockIdx.x) * cols;
  const U* gr = reinterpret_cast<const U*>(g + off);
  const U* yr = reinterpret_cast<const U*>(y + off);
  U* dr = reinterpret_cast<U*>(dx + off);
  float acc = 0.f;
  visit_row<kRowBatch / 2, true>(gr, yr, units, cache_g, cache_y, cached, true, [&](int64_t, const U& ug, const U& uy) {
#pragma unroll
    for (int j = 0; j < N; ++j) acc += log ? to_f(ug.v[j]) : to_f(ug.v[j]) * to_f(uy.v[j]);
  });
  const float s = block_sum(acc, sm);
  visit_row<kRowBatch / 2, true>(gr, yr, units, cache_g, cache_y, cached, false, [&](int64_t k, const U& ug, const U& uy) {
    U o;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float gv = to_f(ug.v[j]), yv = to_f(uy.v[j]);
      o.v[j] = from_f<T>(log ? gv - expf(yv) * s : yv * (gv - s));
    }
    dr[k] = o;
  });
}

template <class T, int N>
void forward_units(const T* xp, T* yp, int64_t rows, int64_t cols, bool log) {
  const int64_t units = cols / N, cached = row_cached_units(units, sizeof(Pack<T, N>), 1);
  allow_row_cache(softmax_forward_kernel<T, N>);
  softmax_forward_kernel<T, N><<<unsigned(rows), row_threads(units), size_t(cached) * sizeof(Pack<T, N>),
                                 coil::cuda::compute_stream()>>>(xp, yp, cols, log, cached);
}

template <class T, int N>
void backward_units(const T* gp, const T* yp, T* dp, int64_t rows, int64_t cols, bool log) {
  const int64_t units = cols / N, cached = row_cached_units(units, sizeof(Pack<T, N>), 2);
  allow_row_cache(softmax_backward_kernel<T, N>);
  softmax_backward_kernel<T, N><<<unsigned(rows), row_threads(units), 2 * size_t(cached) * sizeof(Pack<T, N>),
                                  coil::cuda::compute_stream()>>>(gp, yp, dp, cols, log, cached);
}

template <class T>
void launch_forward(const Tensor& x, const Tensor& y, bool log) {
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  const T* xp = static_cast<const T*>(x.raw());
  T* yp = static_cast<T*>(y.raw());
  COIL_CHECK(rows < (int64_t(1) << 31), "softmax: {} rows exceed the grid", rows);
  if (cols % Pack<T>::n == 0 && aligned16(xp) && aligned16(yp))
    forward_units<T, Pack<T>::n>(xp, yp, rows, cols, log);
  else
    forward_units<T, 1>(xp, yp, rows, cols, log);
  COIL_CUDA_CHECK_LAUNCH("softmax_forward", "x {}, log {}", describe(x), log);
}

template <class T>
void launch_backward(const Tensor& g, const Tensor& y, const Tensor& dx, bool log) {
  const int64_t cols = y.size(-1), rows = y.numel() / cols;
  const T* gp = static_cast<const T*>(g.raw());
  const T* yp = static_cast<const T*>(y.raw());
  T* dp = static_cast<T*>(dx.raw());
  COIL_CHECK(rows < (int64_t(1) << 31), "softmax_backward: {} rows exceed the grid", rows);
  if (cols % Pack<T>::n == 0 && aligned16(gp) && aligned16(yp) && aligned16(dp))
    backward_units<T, Pack<T>::n>(gp, yp, dp, rows, cols, log);
  else
    backward_units<T, 1>(gp, yp, dp, rows, cols, log);
  COIL_CUDA_CHECK_LAUNCH("softmax_backward", "y {}, log {}", describe(y), log);
}

}  // namespace

void softmax_forward(const Tensor& x, const Tensor& y, bool log) {
  switch (x.dtype()) {
    case DType::f32: return launch_forward<float>(x, y, log);
    case DType::bf16: return launch_forward<bf16_t>(x, y, log);
    default: fail("softmax: the GPU takes f32 or bf16, got {}", describe(x));
  }
}

void softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log) {
  switch (y.dtype()) {
    case DType::f32: return launch_backward<float>(grad_y, y, grad_x, log);
    case DType::bf16: return launch_backward<bf16_t>(grad_y, y, grad_x, log);
    default: fail("softmax_backward: the GPU takes f32 or bf16, got {}", describe(y));
  }
}

}  // namespace coil::kernels::cuda
