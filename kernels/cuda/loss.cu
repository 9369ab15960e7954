#include <cuda_bf16.h>

#include <mutex>
#include <vector>

#include "core/allocator.h"
#include "core/cuda.h"
#include "kernels/loss.h"

#include "kernels/cuda/block_reduce.cuh"

namespace coil::kernels::cuda {
namespace {

using u64 = unsigned long long;
constexpr u64 kNoError = ~u64(0);



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
  for (int o = 16; o > 0; o >>= 1) merge_ms(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) {
    smem_m[warp] = m;
    smem_s[warp] = s;
  }
  __syncthreads();
  m = lane < warps ? smem_m[lane] : -INFINITY;
  s = lane < warps ? smem_s[lane] : 0.f;
  for (int o = 16; o > 0; o >>= 1) merge_ms(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
}

__device__ __forceinline__ int64_t target_at(const void* t, bool t64, int64_t i) {
  return t64 ? static_cast<const int64_t*>(t)[i] : int64_t(static_cast<const int32_t*>(t)[i]);
}

// One block per row of logits [rows, V]:
//   pass 1 (unless lse is given): online max / sum of exp -> lse (stored if lse_out);
//   the row loss lse - x[t] (0 if ignored, NaN and an error record if out of range);
//   pass 2 (if grad): grad = scale * (exp(x - lse) - [j == t]), scale = grad_loss / count,
//   written in place when grad == logits (the fused linear cross-entropy).
// DRAM traffic per row: read V (pass 2's re-read mostly from L2 for rows up to ~100k
// elements), write V when the gradient is wanted.
template <class T>
__global__ void cross_entropy_rows_kernel(const T* logits, T* grad, const void* targets, bool t64,
                                          int64_t V, int64_t ignore, int64_t row0, const float* count,
                                          const float* grad_loss, float* lse, bool lse_given,
                                          float* row_loss, u64* err, bool vec) {
  __shared__ float sm[32], ss[32];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const int64_t t = target_at(targets, t64, row);
  const bool ignored = t == ignore, bad = !ignored && (t < 0 || t >= V);
  constexpr int P = Pack<T>::n;
  float l;
  if (lse_given) {
    l = lse[row];
  } else {
    float m = -INFINITY, s = 0.f;
    if (vec) {
      for (int64_t k = threadIdx.x; k < V / P; k += blockDim.x) {
        Pack<T> pk = reinterpret_cast<const Pack<T>*>(x)[k];
#pragma unroll
        for (int j = 0; j < P; ++j) add_ms(m, s, to_f(pk.v[j]));
      }
    } else {
      for (int64_t i = threadIdx.x; i < V; i += blockDim.x) add_ms(m, s, to_f(x[i]));
    }
    block_ms(m, s, sm, ss);
    l = m + logf(s);
    if (lse && threadIdx.x == 0) lse[row] = l;
  }
  if (row_loss) {
    float xt = ignored || bad ? 0.f : to_f(x[t]);  // every thread reads it before pass 2 writes
    if (threadIdx.x == 0) row_loss[row] = ignored ? 0.f : bad ? NAN : l - xt;
  }
  if (bad && threadIdx.x == 0 && atomicCAS(&err[0], kNoError, u64(row0 + row)) == kNoError) {
    err[1] = u64(t);
    err[2] = u64(V);
  }
  if (!grad) return;
  __syncthreads();
  const float c = *count;
  const float scale = (ignored || bad || c <= 0.f) ? 0.f : (grad_loss ? *grad_loss : 1.f) / c;
  T* g = grad + row * V;
  if (vec) {
    for (int64_t k = threadIdx.x; k < V / P; k += blockDim.x) {
      Pack<T> pk = reinterpret_cast<const Pack<T>*>(x)[k], po;
#pragma unroll
      for (int j = 0; j < P; ++j) {
        int64_t i = k * P + j;
        po.v[j] = from_f<T>(scale * (expf(to_f(pk.v[j]) - l) - (i == t ? 1.f : 0.f)));
      }
      reinterpret_cast<Pack<T>*>(g)[k] = po;
    }
  } else {
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
      g[i] = from_f<T>(scale * (expf(to_f(x[i]) - l) - (i == t ? 1.f : 0.f)));
  }
}

// count = #{t != ignore}: one block, integer partial counts (exact), fixed order.
__global__ void count_kernel(const void* targets, bool t64, int64_t n, int64_t ignore, float* count) {
  __shared__ float smem[32];
  int64_t c = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) c += target_at(targets, t64, i) != ignore;
  // Partial counts are below 2^24 per thread for any realistic batch, so exact in fp32.
  float total = block_sum(float(c), smem);
  if (threadIdx.x == 0) *count = total;
}

// loss = sum(row_loss) / count (0 when count is 0): one block, fixed order (deterministic).
__global__ void mean_kernel(const float* row_loss, int64_t n, const float* count, float* loss) {
  __shared__ float smem[32];
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += row_loss[i];
  s = block_sum(s, smem);
  if (threadIdx.x == 0) *loss = *count > 0.f ? s / *count : 0.f;
}

// out = x * s[0]: read n, write n elements.
template <class T>
__global__ void scale_kernel(const T* x, const float* s, T* out, int64_t n) {
  const float f = *s;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = from_f<T>(to_f(x[i]) * f);
}

// acc (f32) += src: read 2n, write n.
template <class T>
__global__ void add_into_kernel(float* acc, const T* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    acc[i] += to_f(src[i]);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int threads_for(int64_t V, int pack) {
  int64_t units = (V + pack - 1) / pack;
  int64_t t = ((units + 3) / 4 + 31) / 32 * 32;
  return int(std::min<int64_t>(std::max<int64_t>(t, 32), 1024));
}

int grid_for(int64_t n) { return int(std::min<int64_t>(std::max<int64_t>((n + 255) / 256, 1), 8192)); }

// The per-device error record {position, target, V, -}: allocated once, never freed.
std::mutex error_mutex;
std::vector<u64*> error_records;

u64* error_record(int device) {
  std::lock_guard<std::mutex> lock(error_mutex);
  if (error_records.size() <= size_t(device)) error_records.resize(size_t(device) + 1, nullptr);
  u64*& rec = error_records[size_t(device)];
  if (!rec) {
    rec = static_cast<u64*>(device_alloc(Device::cuda(device), 4 * sizeof(u64)));
    u64 init[4] = {kNoError, 0, 0, 0};
    coil::cuda::memcpy_host_to_device(rec, init, sizeof(init));
  }
  return rec;
}

template <class T>
void rows_typed(const Tensor& logits, const Tensor& targets, int64_t ignore, int64_t row0, const Tensor& count,
                const Tensor& grad_loss, const Tensor& lse, bool lse_given, const Tensor& row_loss,
                const Tensor& grad) {
  const int64_t N = logits.size(0), V = logits.size(1);
  const T* xp = static_cast<const T*>(logits.raw());
  T* gp = grad.defined() ? static_cast<T*>(grad.raw()) : nullptr;
  bool vec = V % Pack<T>::n == 0 && aligned16(xp) && (!gp || aligned16(gp));
  int threads = threads_for(V, vec ? Pack<T>::n : 1);
  COIL_CHECK(N < (int64_t(1) << 31), "cross_entropy: {} rows exceed the grid", N);
  cross_entropy_rows_kernel<T><<<unsigned(N), threads, 0, coil::cuda::compute_stream()>>>(
      xp, gp, targets.raw(), targets.dtype() == DType::i64, V, ignore, row0, count.data<float>(),
      grad_loss.defined() ? grad_loss.data<float>() : nullptr, lse.defined() ? lse.data<float>() : nullptr,
      lse_given, row_loss.defined() ? row_loss.data<float>() : nullptr, error_record(logits.device().index), vec);
  COIL_CUDA_CHECK_LAUNCH("cross_entropy_rows", "logits {}, targets {}", describe(logits), describe(targets));
}

}  // namespace

void cross_entropy_rows(const Tensor& logits, const Tensor& targets, int64_t ignore_index, int64_t row0,
                        const Tensor& count, const Tensor& grad_loss, const Tensor& lse, bool lse_given,
                        const Tensor& row_loss, const Tensor& grad) {
  switch (logits.dtype()) {
    case DType::f32:
      return rows_typed<float>(logits, targets, ignore_index, row0, count, grad_loss, lse, lse_given, row_loss, grad);
    case DType::bf16:
      return rows_typed<bf16_t>(logits, targets, ignore_index, row0, count, grad_loss, lse, lse_given, row_loss, grad);
    default: fail("cross_entropy: the GPU takes f32 or bf16 logits, got {}", describe(logits));
  }
}

void cross_entropy_count(const Tensor& targets, int64_t ignore_index, const Tensor& count) {
  count_kernel<<<1, 1024, 0, coil::cuda::compute_stream()>>>(targets.raw(), targets.dtype() == DType::i64,
                                                             targets.numel(), ignore_index, count.data<float>());
  COIL_CUDA_CHECK_LAUNCH("cross_entropy_count", "targets {}", describe(targets));
}

void cross_entropy_mean(const Tensor& row_loss, const Tensor& count, const Tensor& loss) {
  mean_kernel<<<1, 1024, 0, coil::cuda::compute_stream()>>>(row_loss.data<float>(), row_loss.numel(),
                                                            count.data<float>(), loss.data<float>());
  COIL_CUDA_CHECK_LAUNCH("cross_entropy_mean", "row losses {}", describe(row_loss));
}

void scale_by_scalar(const Tensor& x, const Tensor& s, const Tensor& out) {
  COIL_CHECK(s.dtype() == DType::f32, "scale_by_scalar: the GPU takes an f32 scale, got {}", describe(s));
  const int64_t n = x.numel();
  cudaStream_t stream = coil::cuda::compute_stream();
  switch (x.dtype()) {
    case DType::f32: scale_kernel<<<grid_for(n), 256, 0, stream>>>(x.data<float>(), s.data<float>(), out.data<float>(), n); break;
    case DType::bf16:
      scale_kernel<<<grid_for(n), 256, 0, stream>>>(static_cast<const bf16_t*>(x.raw()), s.data<float>(),
                                                     static_cast<bf16_t*>(out.raw()), n);
      break;
    default: fail("scale_by_scalar: the GPU takes f32 or bf16, got {}", describe(x));
  }
  COIL_CUDA_CHECK_LAUNCH("scale_by_scalar", "x {}", describe(x));
}

void add_into_f32(const Tensor& acc, const Tensor& src) {
  const int64_t n = acc.numel();
  cudaStream_t stream = coil::cuda::compute_stream();
  if (src.dtype() == DType::f32)
    add_into_kernel<<<grid_for(n), 256, 0, stream>>>(acc.data<float>(), src.data<float>(), n);
  else
    add_into_kernel<<<grid_for(n), 256, 0, stream>>>(acc.data<float>(), static_cast<const bf16_t*>(src.raw()), n);
  COIL_CUDA_CHECK_LAUNCH("add_into_f32", "acc {}, src {}", describe(acc), describe(src));
}

void check_targets(int device) {
  u64* rec = error_record(device);
  u64 host[4];
  coil::cuda::memcpy_device_to_host(host, rec, sizeof(host));  // the documented sync point
  if (host[0] == kNoError) return;
  u64 init[4] = {kNoError, 0, 0, 0};
  coil::cuda::memcpy_host_to_device(rec, init, sizeof(init));
  fail("cross_entropy: target {} at position {} is outside [0, {}) (the vocabulary) and is not ignore_index "
       "(found on cuda:{} by the kernels; that row's loss is NaN)", int64_t(host[1]), int64_t(host[0]),
       int64_t(host[2]), device);
}

}  // namespace coil::kernels::cuda
