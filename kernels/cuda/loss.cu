#include <cuda_bf16.h>

#include <mutex>
#include <vector>

#include "core/allocator.h"
#include "core/cuda.h"
#include "kernels/loss.h"

#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/row_cache.cuh"

namespace coil::kernels::cuda {
namespace {

using u64 = unsigned long long;
constexpr u64 kNoError = ~u64(0);

__device__ __forceinline__ int64_t target_at(const void* t, bool t64, int64_t i) {
  return t64 ? static_cast<const int64_t*>(t)[i] : int64_t(static_cast<const int32_t*>(t)[i]);
}

// One block per row of logits [rows, V], read as units of N elements (a 16-byte pack, or 1):
//   pass 1 (unless lse is given): online max / sum of exp -> lse (stored if lse_out), the row
//   cached in shared memory when the gradient follows (cached > 0);
//   the row loss lse - x[t] (0 if ignored, NaN and an error record if out of range);
//   pass 2 (if grad): grad = scale * (exp(x - lse) - [j == t]), scale = grad_loss / count,
//   from the cache, written in place when grad == logits (the fused linear cross-entropy).
// DRAM traffic per row: read V, write V when the gradient is wanted, plus the uncached tail
// read again (none for bf16 rows up to 55k elements; f32 rows past 27k re-read the rest).
template <class T, int N>
__global__ void __launch_bounds__(kRowThreads, 2)
    cross_entropy_rows_kernel(const T* logits, T* grad, const void* targets, bool t64, int64_t V, int64_t ignore,
                              int64_t row0, const float* count, const float* grad_loss, float* lse, bool lse_given,
                              float* row_loss, u64* err, int64_t cached) {
  using U = Pack<T, N>;
  extern __shared__ float4 row_smem[];
  __shared__ float sm[32], ss[32];
  U* cache = reinterpret_cast<U*>(row_smem);
  const int64_t row = blockIdx.x, units = V / N;
  const T* x = logits + row * V;
  const U* xr = reinterpret_cast<const U*>(x);
  const int64_t t = target_at(targets, t64, row);
  const bool ignored = t == ignore, bad = !ignored && (t < 0 || t >= V);
  // Read before any thread overwrites the row in pass 2 (block_ms and the barrier below order it).
  const float xt = row_loss && threadIdx.x == 0 && !ignored && !bad ? to_f(x[t]) : 0.f;
  float l;
  if (lse_given) {
    l = lse[row];
  } else {
    float m = -INFINITY, s = 0.f;
    visit_row<kRowBatch, false>(xr, (const U*)nullptr, units, cache, (U*)nullptr, cached, true,
              [&](int64_t, const U& u, const U&) { add_ms(m, s, u); });
    block_ms(m, s, sm, ss);
    l = m + logf(s);
    if (lse && threadIdx.x == 0) lse[row] = l;
  }
  if (row_loss && threadIdx.x == 0) row_loss[row] = ignored ? 0.f : bad ? NAN : l - xt;
  if (bad && threadIdx.x == 0 && atomicCAS(&err[0], kNoError, u64(row0 + row)) == kNoError) {
    err[1] = u64(t);
    err[2] = u64(V);
  }
  if (!grad) return;
  __syncthreads();
  const float c = *count;
  const float scale = (ignored || bad || c <= 0.f) ? 0.f : (grad_loss ? *grad_loss : 1.f) / c;
  U* g = reinterpret_cast<U*>(grad + row * V);
  visit_row<kRowBatch, false>(xr, (const U*)nullptr, units, cache, (U*)nullptr, cached, false, [&](int64_t k, const U& u, const U&) {
    U o;
#pragma unroll
    for (int j = 0; j < N; ++j)
      o.v[j] = from_f<T>(scale * (__expf(to_f(u.v[j]) - l) - (k * N + j == t ? 1.f : 0.f)));
    g[k] = o;
  });
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

template <class T, int N>
void rows_units(const T* xp, T* gp, int64_t N_rows, int64_t V, const Tensor& targets, int64_t ignore, int64_t row0,
                const Tensor& count, const Tensor& grad_loss, const Tensor& lse, bool lse_given,
                const Tensor& row_loss, u64* err) {
  const int64_t units = V / N;
  // The cache serves pass 2 only after a pass 1 in the same kernel.
  const int64_t cached = gp && !lse_given ? row_cached_units(units, sizeof(Pack<T, N>), 1) : 0;
  allow_row_cache(cross_entropy_rows_kernel<T, N>);
  cross_entropy_rows_kernel<T, N><<<unsigned(N_rows), row_threads(units), size_t(cached) * sizeof(Pack<T, N>),
                                    coil::cuda::compute_stream()>>>(
      xp, gp, targets.raw(), targets.dtype() == DType::i64, V, ignore, row0, count.data<float>(),
      grad_loss.defined() ? grad_loss.data<float>() : nullptr, lse.defined() ? lse.data<float>() : nullptr,
      lse_given, row_loss.defined() ? row_loss.data<float>() : nullptr, err, cached);
}

template <class T>
void rows_typed(const Tensor& logits, const Tensor& targets, int64_t ignore, int64_t row0, const Tensor& count,
                const Tensor& grad_loss, const Tensor& lse, bool lse_given, const Tensor& row_loss,
                const Tensor& grad) {
  const int64_t N = logits.size(0), V = logits.size(1);
  const T* xp = static_cast<const T*>(logits.raw());
  T* gp = grad.defined() ? static_cast<T*>(grad.raw()) : nullptr;
  COIL_CHECK(N < (int64_t(1) << 31), "cross_entropy: {} rows exceed the grid", N);
  u64* err = error_record(logits.device().index);
  if (V % Pack<T>::n == 0 && aligned16(xp) && (!gp || aligned16(gp)))
    rows_units<T, Pack<T>::n>(xp, gp, N, V, targets, ignore, row0, count, grad_loss, lse, lse_given, row_loss, err);
  else
    rows_units<T, 1>(xp, gp, N, V, targets, ignore, row0, count, grad_loss, lse, lse_given, row_loss, err);
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
