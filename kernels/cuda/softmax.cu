#include <cuda_bf16.h>

#include "core/cuda.h"
#include "kernels/softmax.h"

#include "kernels/cuda/block_reduce.cuh"

namespace coil::kernels::cuda {
namespace {






// Online softmax statistics: (max m, sum s of exp(x - m)) merged pairwise.
__device__ __forceinline__ void merge_ms(float& m, float& s, float m2, float s2) {
  float nm = fmaxf(m, m2);
  if (nm == -INFINITY) return;
  s = s * expf(m - nm) + s2 * expf(m2 - nm);
  m = nm;
}
__device__ __forceinline__ void add_ms(float& m, float& s, float v) {
  if (v > m) {
    s = s * expf(m - v) + 1.f;
    m = v;
  } else if (v != -INFINITY) {
    s += expf(v - m);
  }
}
__device__ void block_ms(float& m, float& s, float* smem_m, float* smem_s) {
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge_ms(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    smem_m[warp] = m;
    smem_s[warp] = s;
  }
  __syncthreads();
  m = lane < warps ? smem_m[lane] : -INFINITY;
  s = lane < warps ? smem_s[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) {
    float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge_ms(m, s, m2, s2);
  }
}

// Visits the block's row: f(i, a[i], b[i]) for each element this thread owns, with 16-byte
// loads when `vec` (row length a multiple of the pack and aligned pointers). b may be null.
template <class T, class F>
__device__ __forceinline__ void visit_row(const T* a, const T* b, int64_t n, bool vec, F&& f) {
  constexpr int V = Pack<T>::n;
  if (vec) {
    for (int64_t k = threadIdx.x; k < n / V; k += blockDim.x) {
      Pack<T> pa = reinterpret_cast<const Pack<T>*>(a)[k], pb;
      if (b) pb = reinterpret_cast<const Pack<T>*>(b)[k];
#pragma unroll
      for (int j = 0; j < V; ++j) f(k * V + j, to_f(pa.v[j]), b ? to_f(pb.v[j]) : 0.f);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i, to_f(a[i]), b ? to_f(b[i]) : 0.f);
  }
}

// out[i] = f(a[i], b[i]) over the block's row, vectorized like visit_row.
template <class T, class F>
__device__ __forceinline__ void map_row(const T* a, const T* b, T* out, int64_t n, bool vec, F&& f) {
  constexpr int V = Pack<T>::n;
  if (vec) {
    for (int64_t k = threadIdx.x; k < n / V; k += blockDim.x) {
      Pack<T> pa = reinterpret_cast<const Pack<T>*>(a)[k], pb, po;
      if (b) pb = reinterpret_cast<const Pack<T>*>(b)[k];
#pragma unroll
      for (int j = 0; j < V; ++j) po.v[j] = from_f<T>(f(to_f(pa.v[j]), b ? to_f(pb.v[j]) : 0.f));
      reinterpret_cast<Pack<T>*>(out)[k] = po;
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      out[i] = from_f<T>(f(to_f(a[i]), b ? to_f(b[i]) : 0.f));
  }
}

// One block per row. Forward: pass 1 reads the row for the online (max, sum of exp), pass 2
// reads it again (from L1/L2 for rows that fit) and writes y. DRAM traffic: read n, write n
// elements per row.
template <class T>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t cols, bool log, bool vec) {
  __shared__ float sm[32], ss[32];
  const T* xr = x + int64_t(blockIdx.x) * cols;
  T* yr = y + int64_t(blockIdx.x) * cols;
  float m = -INFINITY, s = 0.f;
  visit_row(xr, (const T*)nullptr, cols, vec, [&](int64_t, float v, float) { add_ms(m, s, v); });
  block_ms(m, s, sm, ss);
  const float log_s = logf(s), inv_s = 1.f / s;
  if (log)
    map_row(xr, (const T*)nullptr, yr, cols, vec, [&](float v, float) { return v - m - log_s; });
  else
    map_row(xr, (const T*)nullptr, yr, cols, vec, [&](float v, float) { return expf(v - m) * inv_s; });
}

// Backward, one block per row: pass 1 the row sum (sum dy*y, or sum dy for log-softmax),
// pass 2 writes dx. DRAM traffic: read 2n, write n elements per row.
template <class T>
__global__ void softmax_backward_kernel(const T* g, const T* y, T* dx, int64_t cols, bool log, bool vec) {
  __shared__ float sm[32];
  const int64_t off = int64_t(blockIdx.x) * cols;
  float acc = 0.f;
  visit_row(g + off, y + off, cols, vec, [&](int64_t, float gv, float yv) { acc += log ? gv : gv * yv; });
  const float s = block_sum(acc, sm);
  if (log)
    map_row(g + off, y + off, dx + off, cols, vec, [&](float gv, float yv) { return gv - expf(yv) * s; });
  else
    map_row(g + off, y + off, dx + off, cols, vec, [&](float gv, float yv) { return yv * (gv - s); });
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// About four packs per thread, 32 to 1024 threads.
int threads_for(int64_t cols, int pack) {
  int64_t units = (cols + pack - 1) / pack;
  int64_t t = ((units + 3) / 4 + 31) / 32 * 32;
  return int(std::min<int64_t>(std::max<int64_t>(t, 32), 1024));
}

template <class T>
void launch_forward(const Tensor& x, const Tensor& y, bool log) {
  const int64_t cols = x.size(-1), rows = x.numel() / cols;
  const T* xp = static_cast<const T*>(x.raw());
  T* yp = static_cast<T*>(y.raw());
  bool vec = cols % Pack<T>::n == 0 && aligned16(xp) && aligned16(yp);
  int threads = threads_for(cols, vec ? Pack<T>::n : 1);
  COIL_CHECK(rows < (int64_t(1) << 31), "softmax: {} rows exceed the grid", rows);
  softmax_forward_kernel<T><<<unsigned(rows), threads, 0, coil::cuda::compute_stream()>>>(xp, yp, cols, log, vec);
  COIL_CUDA_CHECK_LAUNCH("softmax_forward", "x {}, log {}", describe(x), log);
}

template <class T>
void launch_backward(const Tensor& g, const Tensor& y, const Tensor& dx, bool log) {
  const int64_t cols = y.size(-1), rows = y.numel() / cols;
  const T* gp = static_cast<const T*>(g.raw());
  const T* yp = static_cast<const T*>(y.raw());
  T* dp = static_cast<T*>(dx.raw());
  bool vec = cols % Pack<T>::n == 0 && aligned16(gp) && aligned16(yp) && aligned16(dp);
  int threads = threads_for(cols, vec ? Pack<T>::n : 1);
  COIL_CHECK(rows < (int64_t(1) << 31), "softmax_backward: {} rows exceed the grid", rows);
  softmax_backward_kernel<T><<<unsigned(rows), threads, 0, coil::cuda::compute_stream()>>>(gp, yp, dp, cols, log, vec);
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
