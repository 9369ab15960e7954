// Embedding on the GPU.
// Forward (gather): out[i, :] = weight[ids[i], :]; reads n ids and n*D weight elements, writes
// n*D. One block per token (grid-stride over tokens), threads across D.
// Backward (deterministic scatter-add): keys = ids as int32 (out-of-range ids become the
// sentinel V), values = positions; a stable radix sort (CUB) orders positions by id, keeping
// position order within an id; then one block per run of equal ids sums the run's gradient
// rows in fp32 in that order and writes the vocabulary row (rows that no id names stay zero
// from a memset). Traffic: n*D reads of grad, V*D writes (memset) + (unique ids)*D writes,
// the sort's O(n) passes. No atomics on the gradient, so the result is bitwise reproducible.
// A very frequent id makes one block sum a long run; that costs a few tens of microseconds
// at 16 x 2048 tokens, once per step.
#include <cub/device/device_radix_sort.cuh>
#include <cuda_bf16.h>

#include <atomic>
#include <mutex>
#include <vector>

#include "core/cuda.h"
#include "kernels/cuda/float_access.cuh"
#include "kernels/embedding.h"

namespace coil::kernels::cuda {
namespace {

// The out-of-range report, in mapped pinned host memory (one for the process; with unified
// addressing the same pointer is valid on every device), so the host can read it without a
// copy or a sync. Atomics on mapped host memory are not reliable over PCIe, so the first bad
// id claims the report through an int in device memory (one per device, reset with a
// stream-ordered memset when the report is read); the claiming thread writes the id and its
// position, then publishes `set` after a system-wide fence.
struct ErrorReport {
  int set;
  long long position;
  long long id;
  long long vocab;
};

ErrorReport* host_report() {
  static ErrorReport* report = [] {
    ErrorReport* p = nullptr;
    COIL_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&p), sizeof(ErrorReport),
                                  cudaHostAllocMapped | cudaHostAllocPortable));
    *p = ErrorReport{0, 0, 0, 0};
    return p;
  }();
  return report;
}

ErrorReport* device_report() {
  ErrorReport* d = nullptr;
  COIL_CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&d), host_report(), 0));
  return d;
}

// The claim word of the current device (zeroed on creation).
int* device_claim() {
  static std::mutex mutex;
  static std::vector<int*> claims;
  std::lock_guard<std::mutex> lock(mutex);
  int device = coil::cuda::current_device();
  if (claims.empty()) claims.assign(size_t(cuda_device_count()), nullptr);
  int*& claim = claims[size_t(device)];
  if (!claim) {
    COIL_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&claim), sizeof(int)));
    COIL_CUDA_CHECK(cudaMemset(claim, 0, sizeof(int)));
  }
  return claim;
}

struct ErrorFlag {
  int* claim;
  ErrorReport* report;
};

ErrorFlag device_error_flag() { return ErrorFlag{device_claim(), device_report()}; }

__device__ void raise_bad_id(ErrorFlag flag, int64_t position, int64_t id, int64_t vocab) {
  if (atomicCAS(flag.claim, 0, 1) == 0) {
    flag.report->position = position;
    flag.report->id = id;
    flag.report->vocab = vocab;
    __threadfence_system();
    *reinterpret_cast<volatile int*>(&flag.report->set) = 1;
  }
}

// out[i, :] = weight[ids[i], :] (a zero row for an out-of-range id, which is reported).
template <class T, class I>
__global__ void gather_kernel(const T* weight, const I* ids, T* out, int64_t n, int64_t V, int64_t D,
                              ErrorFlag flag) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    int64_t id = int64_t(ids[i]);
    T* o = out + i * D;
    if (id < 0 || id >= V) {
      if (threadIdx.x == 0) raise_bad_id(flag, i, id, V);
      for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = T(0.0f);
      continue;
    }
    const T* w = weight + id * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) o[d] = w[d];
  }
}

// keys[i] = ids[i] (V for an out-of-range id, which is reported), values[i] = i.
template <class I>
__global__ void prepare_keys_kernel(const I* ids, int32_t* keys, int32_t* values, int64_t n, int64_t V,
                                    ErrorFlag flag) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t id = int64_t(ids[i]);
    bool bad = id < 0 || id >= V;
    if (bad) raise_bad_id(flag, i, id, V);
    keys[i] = bad ? int32_t(V) : int32_t(id);
    values[i] = int32_t(i);
  }
}

// Block b handles sorted position b if it starts a run of equal keys: grad_weight[key, :] =
// sum over the run (in sorted, i.e. position, order) of grad[position, :], in fp32.
template <class T>
__global__ void run_sum_kernel(const T* grad, const int32_t* keys, const int32_t* positions, T* grad_weight,
                               int64_t n, int64_t V, int64_t D) {
  for (int64_t b = blockIdx.x; b < n; b += gridDim.x) {
    int32_t key = keys[b];
    if (key >= V || (b > 0 && keys[b - 1] == key)) continue;
    int64_t end = b + 1;
    while (end < n && keys[end] == key) ++end;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float acc = 0.0f;
      for (int64_t j = b; j < end; ++j) acc += load(grad, int64_t(positions[j]) * D + d);
      store(grad_weight, int64_t(key) * D + d, acc);
    }
  }
}

template <class F>
void dispatch_ids(const Tensor& ids, F&& f) {
  if (ids.dtype() == DType::i32)
    f(static_cast<const int32_t*>(ids.raw()));
  else
    f(static_cast<const long long*>(ids.raw()));
}

int block_for(int64_t D) { return D >= 256 ? 256 : D >= 128 ? 128 : 64; }

}  // namespace

void report_embedding_error(const char* op) {
  ErrorReport* report = host_report();
  if (*reinterpret_cast<volatile int*>(&report->set) == 0) return;
  std::atomic_thread_fence(std::memory_order_acquire);  // the fields were written before `set`
  volatile ErrorReport* v = report;
  ErrorReport seen{0, v->position, v->id, v->vocab};
  report->set = 0;
  // Re-arm the claim after every kernel queued so far (stream order; no host sync).
  COIL_CUDA_CHECK(cudaMemsetAsync(device_claim(), 0, sizeof(int), coil::cuda::compute_stream()));
  fail("{}: id {} at flat position {} of the ids given to an earlier GPU embedding kernel is outside the "
       "vocabulary [0, {}) (its output row was zero, its gradient dropped)",
       op, seen.id, seen.position, seen.vocab);
}

void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  int64_t n = ids.numel(), V = weight.size(0), D = weight.size(1);
  ErrorFlag flag = device_error_flag();
  int grid = int(std::min<int64_t>(n, 65535));
  dispatch_gpu_float("embedding", weight, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    dispatch_ids(ids, [&](auto* id_ptr) {
      gather_kernel<<<grid, block_for(D), 0, coil::cuda::compute_stream()>>>(
          static_cast<const T*>(weight.raw()), id_ptr, static_cast<T*>(out.raw()), n, V, D, flag);
    });
  });
  COIL_CUDA_CHECK_LAUNCH("embedding", "weight {}, ids {}", describe(weight), describe(ids));
}

void embedding_backward(const Tensor& grad, const Tensor& ids, const Tensor& grad_weight) {
  int64_t n = ids.numel(), V = grad_weight.size(0), D = grad_weight.size(1);
  COIL_CHECK(n < (int64_t(1) << 31) && V < (int64_t(1) << 31) - 1,
             "embedding backward: {} ids and a vocabulary of {} exceed the GPU kernel's int32 limits", n, V);
  cudaStream_t stream = coil::cuda::compute_stream();
  if (grad_weight.nbytes() > 0) COIL_CUDA_CHECK(cudaMemsetAsync(grad_weight.raw(), 0, grad_weight.nbytes(), stream));
  if (n == 0 || D == 0) return;
  Device dev = grad.device();
  Tensor keys = Tensor::empty({n}, DType::i32, dev), values = Tensor::empty({n}, DType::i32, dev);
  Tensor sorted_keys = Tensor::empty({n}, DType::i32, dev), sorted_values = Tensor::empty({n}, DType::i32, dev);
  ErrorFlag flag = device_error_flag();
  dispatch_ids(ids, [&](auto* id_ptr) {
    prepare_keys_kernel<<<int(std::min<int64_t>((n + 255) / 256, 4096)), 256, 0, stream>>>(
        id_ptr, keys.data<int32_t>(), values.data<int32_t>(), n, V, flag);
  });
  COIL_CUDA_CHECK_LAUNCH("embedding backward (keys)", "ids {}", describe(ids));

  int end_bit = 1;
  while (end_bit < 32 && (int64_t(1) << end_bit) <= V) ++end_bit;  // keys lie in [0, V]
  size_t temp_bytes = 0;
  COIL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data<int32_t>(),
                                                  sorted_keys.data<int32_t>(), values.data<int32_t>(),
                                                  sorted_values.data<int32_t>(), int(n), 0, end_bit, stream));
  Tensor temp = Tensor::empty({int64_t(temp_bytes / 4 + 1)}, DType::i32, dev);  // >= temp_bytes
  COIL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.raw(), temp_bytes, keys.data<int32_t>(),
                                                  sorted_keys.data<int32_t>(), values.data<int32_t>(),
                                                  sorted_values.data<int32_t>(), int(n), 0, end_bit, stream));

  int grid = int(std::min<int64_t>(n, 65535));
  dispatch_gpu_float("embedding backward", grad, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    run_sum_kernel<<<grid, block_for(D), 0, stream>>>(static_cast<const T*>(grad.raw()),
                                                      sorted_keys.data<int32_t>(), sorted_values.data<int32_t>(),
                                                      static_cast<T*>(grad_weight.raw()), n, V, D);
  });
  COIL_CUDA_CHECK_LAUNCH("embedding backward", "grad {}, ids {}, vocabulary {}", describe(grad), describe(ids), V);
}

}  // namespace coil::kernels::cuda
