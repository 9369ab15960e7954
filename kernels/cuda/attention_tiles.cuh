// The tile bookkeeping the CUDA attention kernels share (kernels/cuda/attention.cu, the
// mma.sync kernels, and kernels/cuda/attention_hopper{,_backward}.cu, the wgmma kernels):
// which key tiles a query block visits and which query tiles a key block visits, which tiles
// need the element mask, the mask itself, and the reductions over the four lanes that hold
// one row of an mma / wgmma accumulator fragment.
#pragma once
#include <cstdint>

namespace coil::kernels::cuda {

// The start of the document of query q < T in the batch row at row_base (doc_start: (B, T)
// document starts, kernels::document_starts; null without documents: 0).
__device__ __forceinline__ int doc_first(const int32_t* doc_start, int64_t row_base, int q) {
  return doc_start ? doc_start[row_base + q] : 0;
}

// Whether query q sees key k (causal, window, documents); first: the start of q's document
// (0 without documents). Queries q >= T see nothing.
__device__ __forceinline__ bool visible(int q, int k, int T, int window, int first) {
  return k <= q && q < T && k >= first && (window <= 0 || q - k < window);
}

// Range of key tiles [lo, hi) that queries [q0, q0 + BR) can see; doc_lo: the start of q0's
// document (keys before it lie in documents that no query of the tile belongs to).
template <int BR, int BC>
__device__ __forceinline__ void key_tile_range(int q0, int T, int window, int doc_lo, int& lo, int& hi) {
  int q_last = min(T, q0 + BR) - 1;
  hi = q_last / BC + 1;
  lo = max(window > 0 ? max(0, q0 - window + 1) / BC : 0, doc_lo / BC);
}
// End (exclusive) of the queries that keys up to k_last (< T) of one key block can see: T,
// cut to k_last + window with a window and, with documents, to the first query after k_last
// whose document starts after k_last (a binary search: document starts never decrease).
__device__ __forceinline__ int query_end(int k_last, int T, int window, const int32_t* doc_start,
                                         int64_t row_base) {
  int end = window > 0 ? min(T, k_last + window) : T;
  if (doc_start) {
    int lo = k_last + 1;
    while (lo < end) {
      const int mid = (lo + end) / 2;
      if (doc_first(doc_start, row_base, mid) > k_last) end = mid;
      else lo = mid + 1;
    }
  }
  return end;
}
// Whether some (query, key) pair of the tiles is masked (diagonal, window edge, sequence end,
// or, with doc_hi the start of the last query's document, a document edge).
template <int BR, int BC>
__device__ __forceinline__ bool tile_needs_mask(int q0, int k0, int T, int window, int doc_hi) {
  return k0 + BC - 1 > q0 || q0 + BR > T || k0 + BC > T ||
         (window > 0 && q0 + BR - 1 - k0 >= window) || k0 < doc_hi;
}

// Whether queries [q0, q0 + nq) see none of the keys [k0, k0 + nk) by position alone: every
// key after every query, every query past the window of every key, or all keys or all queries
// past T (documents are left to the element mask).
__device__ __forceinline__ bool tiles_hidden(int q0, int nq, int k0, int nk, int T, int window) {
  return q0 + nq - 1 < k0 || k0 >= T || q0 >= T || (window > 0 && q0 - (k0 + nk - 1) >= window);
}

// Max and sum over the 4 lanes (lane ^ 1, lane ^ 2) that hold one accumulator row.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

}  // namespace coil::kernels::cuda
