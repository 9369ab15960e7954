// Document bounds on CUDA (kernels/documents.h): start[b, t] = the largest t' <= t that starts a
// document (0 if none), an inclusive max-scan along each row. One block of kThreads per row
// walks it in chunks of kThreads positions: a warp-shuffle scan, a scan of the warp totals in
// shared memory, and the running maximum carried from chunk to chunk.
// Memory traffic: reads seq_idx once (and each position's left neighbour, cached), writes
// starts (i32) and/or positions (i64) once; B*L is small next to the layers that use them.
#include "core/cuda.h"
#include "kernels/documents.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;

__global__ void __launch_bounds__(kThreads) document_bounds_kernel(const int32_t* seq_idx, int32_t* starts,
                                                                   int64_t* positions, int64_t L) {
  __shared__ int warp_max[kWarps];
  __shared__ int carry;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t* row = seq_idx + int64_t(blockIdx.x) * L;
  if (threadIdx.x == 0) carry = 0;
  for (int64_t base = 0; base < L; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    int v = t < L && starts_document(row, t) ? int(t) : 0;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int o = __shfl_up_sync(0xffffffffu, v, off);
      if (lane >= off) v = max(v, o);
    }
    if (lane == 31) warp_max[warp] = v;
    __syncthreads();  // warp totals written; carry from the previous chunk visible
    if (warp == 0) {
      int w = warp_max[lane];
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int o = __shfl_up_sync(0xffffffffu, w, off);
        if (lane >= off) w = max(w, o);
      }
      warp_max[lane] = w;
    }
    __syncthreads();
    const int start = max(carry, max(v, warp > 0 ? warp_max[warp - 1] : 0));
    if (t < L) {
      const int64_t i = int64_t(blockIdx.x) * L + t;
      if (starts) starts[i] = start;
      if (positions) positions[i] = t - start;
    }
    __syncthreads();  // everyone has read carry and warp_max
    if (threadIdx.x == kThreads - 1) carry = max(carry, start);
  }
}

}  // namespace

void document_bounds(const Tensor& seq_idx, const Tensor& starts, const Tensor& positions) {
  const int64_t B = seq_idx.size(0), L = seq_idx.size(1);
  COIL_CHECK(B <= 2147483647 && L < (int64_t(1) << 31), "document_bounds: seq_idx {} is too large (length < 2^31)",
             describe(seq_idx));
  document_bounds_kernel<<<unsigned(B), kThreads, 0, coil::cuda::compute_stream()>>>(
      seq_idx.data<int32_t>(), starts.defined() ? starts.data<int32_t>() : nullptr,
      positions.defined() ? positions.data<int64_t>() : nullptr, L);
  COIL_CUDA_CHECK_LAUNCH("document_bounds", "seq_idx {}", describe(seq_idx));
}

}  // namespace coil::kernels::cuda
