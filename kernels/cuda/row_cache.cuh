// One block streams one long row (softmax, cross-entropy: a 50k vocabulary) twice without
// reading DRAM twice: the first pass loads the row in batches of kRowBatch units per thread
// (that many loads in flight before any is used) and keeps the first `cached` units in shared
// memory; the second pass takes those from shared memory and re-reads only the rest (counted
// as extra traffic by the callers). A unit is a Pack: 16 bytes, or one element when the row
// rules out vector access. Thread t always visits units t, t + blockDim, ..., so each thread
// reads back only what it cached itself (no barrier needed between the passes).
#pragma once
#include <algorithm>
#include <cstdint>

#include "core/cuda.h"
#include "kernels/cuda/block_reduce.cuh"

namespace coil::kernels::cuda {

constexpr int kRowThreads = 512;               // threads of a row block (two blocks an SM)
constexpr int kRowBatch = 4;                   // units a thread loads at once (8 spill in 64 registers)
constexpr size_t kRowCacheBytes = 108 * 1024;  // shared memory of a row block: two fit an SM

// Visits the units of one row (Pair false: b and cache_b unused) or two parallel rows:
// f(k, a[k], b[k]), B units of each row loaded at once before any is used.
// fill: the first pass (load from global, store units below `cached` into the caches);
// otherwise units below `cached` come from the caches.
template <int B, bool Pair, class U, class F>
__device__ __forceinline__ void visit_row(const U* a, const U* b, int64_t units, U* cache_a, U* cache_b,
                                          int64_t cached, bool fill, F&& f) {
  for (int64_t k0 = threadIdx.x; k0 < units; k0 += int64_t(B) * blockDim.x) {
    U ua[B], ub[Pair ? B : 1] = {};
#pragma unroll
    for (int i = 0; i < B; ++i) {
      const int64_t k = k0 + int64_t(i) * blockDim.x;
      if (k >= units) continue;
      const bool hit = !fill && k < cached;
      ua[i] = hit ? cache_a[k] : a[k];
      if constexpr (Pair) ub[i] = hit ? cache_b[k] : b[k];
    }
#pragma unroll
    for (int i = 0; i < B; ++i) {
      const int64_t k = k0 + int64_t(i) * blockDim.x;
      if (k >= units) continue;
      if (fill && k < cached) {
        cache_a[k] = ua[i];
        if constexpr (Pair) cache_b[k] = ub[i];
      }
      f(k, ua[i], ub[Pair ? i : 0]);
    }
  }
}

// Units of a row (`arrays` parallel rows) that the shared-memory budget caches.
inline int64_t row_cached_units(int64_t units, size_t unit_bytes, int arrays) {
  return std::min<int64_t>(units, int64_t(kRowCacheBytes / (unit_bytes * size_t(arrays))));
}

// Threads of a row block: about kRowBatch units per thread, 32 to kRowThreads.
inline int row_threads(int64_t units) {
  int64_t t = ((units + kRowBatch - 1) / kRowBatch + 31) / 32 * 32;
  return int(std::min<int64_t>(std::max<int64_t>(t, 32), kRowThreads));
}

// Lets `kernel` take kRowCacheBytes of dynamic shared memory (above the default 48 KiB).
template <class K>
void allow_row_cache(K* kernel) {
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kRowCacheBytes)));
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       int(cudaSharedmemCarveoutMaxShared)));
}

}  // namespace coil::kernels::cuda
