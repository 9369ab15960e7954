// Flash-style causal attention on the GPU: bf16 at the memory interface, bf16 tensor-core
// products (mma.sync m16n8k16, fp32 accumulation), fp32 online softmax. No T x T matrix is
// ever written to device memory. See docs/ATTENTION.md for the design.
//
// Shared structure of the three main kernels: one thread block owns a tile of rows (queries
// or keys) of one (batch, head); each warp owns 16 of those rows and keeps its accumulators
// in registers in the mma C-fragment layout; the other operand streams through shared memory
// in tiles, double-buffered with cp.async. Shared-memory rows are padded by 16 bytes
// (row pitch hd+8 elements) so that ldmatrix reads of 8 rows hit 8 different bank groups.
// Probabilities P (and dS in the backward) go from the C-fragment layout of one product
// straight into the A-fragment layout of the next, without a trip through shared memory.
// Documents (kernels/documents.h): each query sees keys from the start of its document on
// (doc_start, computed once per call by kernels::document_starts). A query tile skips the key
// tiles before its first query's document start, a key tile stops at the first query of a
// later document, and only tiles that straddle a document edge pay for the element mask; so
// documents every ~500 tokens make attention cheaper, not dearer.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/cuda.h"
#include "kernels/attention.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/attention_tiles.cuh"

namespace coil::kernels::cuda {
namespace {

constexpr float kLn2 = 0.6931471805599453f;

// ---------------------------------------------------------------------------------------------
// PTX wrappers of the tensor-core path (cp.async and ex2 come from device_util.cuh).

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c += a (16x16, row) * b (16x8, col), bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------------------------------------
// Warp-level tile products. Shared tiles are row-major with pitch LDS elements.
//
// A fragment (16 rows x 16 k) of a row-major [m][k] tile at (row0, k0).
template <int LDS>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const bf16_t* s, int row0, int k0,
                                       int lane) {
  ldsm_x4(a, s + (row0 + (lane & 15)) * LDS + k0 + (lane >> 4) * 8);
}
// B fragments of two n-tiles (n0..n0+7, n0+8..n0+15) x 16 k from an [n][k] tile (k contiguous):
// b[0], b[1] for the first n-tile, b[2], b[3] for the second.
template <int LDS>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[4], const bf16_t* s, int n0, int k0,
                                          int lane) {
  ldsm_x4(b, s + (n0 + (lane & 7) + (lane >> 4) * 8) * LDS + k0 + ((lane >> 3) & 1) * 8);
}
// The same from a [k][n] tile (n contiguous), through ldmatrix.trans.
template <int LDS>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[4], const bf16_t* s, int n0, int k0,
                                          int lane) {
  ldsm_x4_trans(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LDS + n0 + (lane >> 4) * 8);
}

// acc[NT][4] += A (16 x K, row-major tile `a_s` at row a_row0) * B^T where B is an [n][k]
// tile `b_s` of NT*8 rows: i.e. acc = A B^T, the "scores" product.
template <int K, int NT, int LDS>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const bf16_t* a_s, int a_row0,
                                        const bf16_t* b_s, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[4];
    load_a<LDS>(a, a_s, a_row0, kk * 16, lane);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      load_b_nk<LDS>(b, b_s, np * 16, kk * 16, lane);
      mma16816(acc[2 * np], a, b[0], b[1]);
      mma16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// The A fragment (16 rows x 16 k, bf16) of k-step kk from fp32 values p (16 x K) held in the
// C-fragment layout of a previous product: C n-tiles 2kk and 2kk+1 are exactly that k range.
template <int K>
__device__ __forceinline__ void pack_a_frag(uint32_t (&a)[4], const float (&p)[K / 8][4], int kk) {
  a[0] = pack_bf16x2(p[2 * kk][0], p[2 * kk][1]);
  a[1] = pack_bf16x2(p[2 * kk][2], p[2 * kk][3]);
  a[2] = pack_bf16x2(p[2 * kk + 1][0], p[2 * kk + 1][1]);
  a[3] = pack_bf16x2(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}

// acc[N/8][4] += P (16 x K, in C-fragment layout: p[K/8][4]) * B where B is a [k][n] tile
// (K rows, N columns, n contiguous) in shared memory.
template <int K, int N, int LDS>
__device__ __forceinline__ void mma_pb(float (&acc)[N / 8][4], const float (&p)[K / 8][4],
                                       const bf16_t* b_s, int lane) {
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t a[4];
    pack_a_frag<K>(a, p, kk);
#pragma unroll
    for (int np = 0; np < N / 16; ++np) {
      uint32_t b[4];
      load_b_kn<LDS>(b, b_s, np * 16, kk * 16, lane);
      mma16816(acc[2 * np], a, b[0], b[1]);
      mma16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Copies ROWS x D bf16 from global rows `stride` elements apart into a shared tile (pitch
// LDS); rows >= rows_valid are zero-filled. Asynchronous: commit and wait outside.
template <int D, int ROWS, int LDS, int NT>
__device__ __forceinline__ void load_tile(bf16_t* s, const bf16_t* g, int64_t stride,
                                          int rows_valid, int tid) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int c = tid; c < ROWS * kChunks; c += NT) {
    int r = c / kChunks, ch = c % kChunks;
    bool ok = r < rows_valid;
    const bf16_t* src = ok ? g + int64_t(r) * stride + ch * 8 : g;
    cp_async16(s + r * LDS + ch * 8, src, ok ? 16 : 0);
  }
}

struct Params {
  const bf16_t* q;
  const bf16_t* k;
  const bf16_t* v;
  const bf16_t* o;   // forward output (backward only)
  const bf16_t* dout;
  bf16_t* out;       // forward output
  bf16_t* dq;
  bf16_t* dk;
  bf16_t* dv;
  float* lse;        // (B, H, T)
  float* delta;      // (B, H, T): rowsum(dO * O)
  const int* doc_start;  // (B, T): the start of each position's document, or null
  int64_t stride;    // token stride of q, k, v, dq, dk, dv
  int T, H, window;
  float scale, scale_log2;
};

// The start of the document of query q < T in the batch row at row_base (0 without documents).
__device__ __forceinline__ int doc_first(const Params& p, int64_t row_base, int q) {
  return cuda::doc_first(p.doc_start, row_base, q);
}

// ---------------------------------------------------------------------------------------------
// Forward. Block: NW warps, each owning MT m-tiles of 16 queries (BR = 16*MT*NW queries of one
// (b, h)); key/value tiles of BC = 64. Per key tile: S = Q K^T (16*MT x 64 per warp, in
// registers), online softmax (running row max m and row sum l, in the log2 domain),
// O = O * exp(m_old - m_new) + P V. Every K or V fragment read from shared memory feeds MT
// m-tiles: MT = 2 halves the shared-memory reads per tensor-core product.
// Memory: reads Q once, K and V once per query block (L2 keeps them hot), writes O and lse.

// One online-softmax step of a 16-row m-tile: s (the raw scores of this key tile, C-fragment
// layout) becomes P = exp2(s scale log2e - m_new) with masked entries 0 (one FMA and one ex2
// per score; m is kept in log2 units); o and l are rescaled by exp2(m_old - m_new), l gains
// the row sums of P. This thread's rows are row0 and row0 + 8 of the batch row at row_base,
// its keys k0 + j*8 + (lane & 3)*2 + (c & 1).
template <int D, int BC>
__device__ __forceinline__ void softmax_step(float (&s)[BC / 8][4], float (&o)[D / 8][4],
                                             float (&m)[2], float (&l)[2], bool masked, int row0,
                                             int64_t row_base, int k0, const Params& p, int lane) {
  float mx[2] = {-INFINITY, -INFINITY};  // row maxima of the raw scores
  int first[2] = {0, 0};                 // the starts of the rows' documents (masked tiles only)
  if (masked)
#pragma unroll
    for (int r = 0; r < 2; ++r) first[r] = row0 + r * 8 < p.T ? doc_first(p, row_base, row0 + r * 8) : 0;
#pragma unroll
  for (int j = 0; j < BC / 8; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      if (masked) {
        int qi = row0 + (c >> 1) * 8, ki = k0 + j * 8 + (lane & 3) * 2 + (c & 1);
        if (!(visible(qi, ki, p.T, p.window, first[c >> 1]) && ki < p.T)) s[j][c] = -INFINITY;
      }
      mx[c >> 1] = fmaxf(mx[c >> 1], s[j][c]);
    }
  float alpha[2], m_use[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m_new = fmaxf(m[r], quad_max(mx[r]) * p.scale_log2);
    m_use[r] = m_new == -INFINITY ? 0.f : m_new;
    alpha[r] = ex2(m[r] - m_use[r]);
    m[r] = m_new;
  }
  float rs[2] = {0.f, 0.f};
#pragma unroll
  for (int j = 0; j < BC / 8; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      float e = ex2(fmaf(s[j][c], p.scale_log2, -m_use[c >> 1]));
      s[j][c] = e;
      rs[c >> 1] += e;
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + rs[r];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
    o[j][0] *= alpha[0];
    o[j][1] *= alpha[0];
    o[j][2] *= alpha[1];
    o[j][3] *= alpha[1];
  }
}

template <int D, int NW, int MT>
__global__ void __launch_bounds__(NW * 32) attention_fwd_kernel(Params p) {
  constexpr int WR = 16 * MT, BR = WR * NW, BC = 64, LDS = D + 8, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sK = sQ + BR * LDS;  // [2][BC][LDS]
  bf16_t* sV = sK + 2 * BC * LDS;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qb = gridDim.x - 1 - blockIdx.x;  // longest rows first
  const int h = blockIdx.y, b = blockIdx.z;
  const int T = p.T, q0 = qb * BR;
  const int64_t row_base = int64_t(b) * T;
  const bf16_t* gq = p.q + (row_base + q0) * p.stride + int64_t(h) * D;
  const bf16_t* gk = p.k + row_base * p.stride + int64_t(h) * D;
  const bf16_t* gv = p.v + row_base * p.stride + int64_t(h) * D;

  int kt_lo, kt_hi;
  key_tile_range<BR, BC>(q0, T, p.window, doc_first(p, row_base, q0), kt_lo, kt_hi);
  const int n_tiles = kt_hi - kt_lo;
  const int doc_hi = doc_first(p, row_base, min(T, q0 + BR) - 1);

  load_tile<D, BR, LDS, NT>(sQ, gq, p.stride, T - q0, tid);
  {
    int k0 = (kt_hi - 1) * BC;
    load_tile<D, BC, LDS, NT>(sK, gk + int64_t(k0) * p.stride, p.stride, T - k0, tid);
    load_tile<D, BC, LDS, NT>(sV, gv + int64_t(k0) * p.stride, p.stride, T - k0, tid);
  }
  cp_async_commit();

  float o[MT][D / 8][4], m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int j = 0; j < D / 8; ++j) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }
  uint32_t qf[MT][D / 16][4];
  const int r_lo = q0 + warp * WR + (lane >> 2);  // rows r_lo + 16*mt and r_lo + 16*mt + 8

  for (int i = 0; i < n_tiles; ++i) {
    const int kt = kt_hi - 1 - i, k0 = kt * BC, buf = i & 1;
    cp_async_wait_all();
    __syncthreads();
    if (i == 0) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk)
          load_a<LDS>(qf[mt][kk], sQ, warp * WR + mt * 16, kk * 16, lane);
    }
    if (i + 1 < n_tiles) {
      int kn = k0 - BC;
      load_tile<D, BC, LDS, NT>(sK + (buf ^ 1) * BC * LDS, gk + int64_t(kn) * p.stride, p.stride,
                                T - kn, tid);
      load_tile<D, BC, LDS, NT>(sV + (buf ^ 1) * BC * LDS, gv + int64_t(kn) * p.stride, p.stride,
                                T - kn, tid);
    }
    cp_async_commit();
    const bf16_t* k_s = sK + buf * BC * LDS;
    const bf16_t* v_s = sV + buf * BC * LDS;

    float s[MT][BC / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < BC / 8; ++j) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < BC / 16; ++np) {
        uint32_t bb[4];
        load_b_nk<LDS>(bb, k_s, np * 16, kk * 16, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(s[mt][2 * np], qf[mt][kk], bb[0], bb[1]);
          mma16816(s[mt][2 * np + 1], qf[mt][kk], bb[2], bb[3]);
        }
      }
    }
    const bool masked = tile_needs_mask<BR, BC>(q0, k0, T, p.window, doc_hi);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
      softmax_step<D, BC>(s[mt], o[mt], m[mt], l[mt], masked, r_lo + mt * 16, row_base, k0, p, lane);
    // O += P V.
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) pack_a_frag<BC>(a[mt], s[mt], kk);
#pragma unroll
      for (int np = 0; np < D / 16; ++np) {
        uint32_t bb[4];
        load_b_kn<LDS>(bb, v_s, np * 16, kk * 16, lane);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma16816(o[mt][2 * np], a[mt], bb[0], bb[1]);
          mma16816(o[mt][2 * np + 1], a[mt], bb[2], bb[3]);
        }
      }
    }
  }
  cp_async_wait_all();

  // Epilogue: O / l, lse = m ln2 + ln l.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float lt = quad_sum(l[mt][r]);
      int qi = r_lo + mt * 16 + r * 8;
      float inv = lt > 0.f ? 1.f / lt : 0.f;
      if (qi < T) {
        bf16_t* go = p.out + ((row_base + qi) * p.H + h) * D;
#pragma unroll
        for (int j = 0; j < D / 8; ++j) {
          uint32_t v2 = pack_bf16x2(o[mt][j][2 * r] * inv, o[mt][j][2 * r + 1] * inv);
          *reinterpret_cast<uint32_t*>(go + j * 8 + (lane & 3) * 2) = v2;
        }
        if ((lane & 3) == 0)
          p.lse[(int64_t(b) * p.H + h) * T + qi] = m[mt][r] * kLn2 + logf(lt);
      }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward preprocessing: delta[b, h, t] = sum_d dO[b, t, h, d] * O[b, t, h, d] (fp32).
// One warp per (b, t, h) row; reads dO and O once.
template <int D>
__global__ void attention_bwd_delta_kernel(Params p, int64_t rows) {
  int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const bf16_t* go = p.o + row * D;
  const bf16_t* gd = p.dout + row * D;
  float acc = 0.f;
#pragma unroll
  for (int i = lane * 2; i < D; i += 64) {
    float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(go + i));
    float2 c = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(gd + i));
    acc += a.x * c.x + a.y * c.y;
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    int64_t bt = row / p.H;
    int h = int(row % p.H);
    int64_t b = bt / p.T, t = bt % p.T;
    p.delta[(b * p.H + h) * p.T + t] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, dK and dV. Block: NW warps, BKV = 16*NW keys of one (b, h), each warp 16 keys;
// query tiles of BQ stream through shared memory (Q, dO, lse, delta; double-buffered).
// Per query tile, per warp, everything transposed (keys are the rows):
//   S^T = K Q^T, P^T = exp2(S^T scale log2e - lse log2e), dP^T = V dO^T,
//   dS^T = P^T (dP^T - delta), dV += P^T dO, dK += dS^T Q; finally dK *= scale.
// Documents: the query tiles stop at the first query whose document starts after the block's
// last key (a binary search of the document starts), and each query's start comes with its
// lse into shared memory for the mask.
// Memory: reads K, V once, Q, dO, lse, delta once per key block; writes dK, dV once.
template <int D, int NW, int BQ>
__global__ void __launch_bounds__(NW * 32) attention_bwd_dkdv_kernel(Params p) {
  constexpr int BKV = 16 * NW, LDS = D + 8, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sK = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sV = sK + BKV * LDS;
  bf16_t* sQ = sV + BKV * LDS;      // [2][BQ][LDS]
  bf16_t* sdO = sQ + 2 * BQ * LDS;  // [2][BQ][LDS]
  float* sL = reinterpret_cast<float*>(sdO + 2 * BQ * LDS);  // [2][BQ] lse * log2e
  float* sDl = sL + 2 * BQ;                                  // [2][BQ] delta
  int* sF = reinterpret_cast<int*>(sDl + 2 * BQ);            // [2][BQ] document starts

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int h = blockIdx.y, b = blockIdx.z;
  const int T = p.T, k0 = blockIdx.x * BKV;
  const int64_t row_base = int64_t(b) * T;
  const int64_t hoff = int64_t(h) * D;
  const int64_t stat_base = (int64_t(b) * p.H + h) * T;
  const bf16_t* gq = p.q + row_base * p.stride + hoff;
  const bf16_t* gdo = p.dout + row_base * p.H * D + hoff;
  const int64_t do_stride = int64_t(p.H) * D;

  const int q_end = query_end(min(T, k0 + BKV) - 1, T, p.window, p.doc_start, row_base);
  const int qt_lo = k0 / BQ, qt_hi = (q_end + BQ - 1) / BQ;
  const int n_tiles = qt_hi - qt_lo;

  load_tile<D, BKV, LDS, NT>(sK, p.k + (row_base + k0) * p.stride + hoff, p.stride, T - k0, tid);
  load_tile<D, BKV, LDS, NT>(sV, p.v + (row_base + k0) * p.stride + hoff, p.stride, T - k0, tid);
  auto load_q_tile = [&](int qt, int buf) {
    int q0 = qt * BQ;
    load_tile<D, BQ, LDS, NT>(sQ + buf * BQ * LDS, gq + int64_t(q0) * p.stride, p.stride, T - q0,
                              tid);
    load_tile<D, BQ, LDS, NT>(sdO + buf * BQ * LDS, gdo + int64_t(q0) * do_stride, do_stride,
                              T - q0, tid);
    for (int i = tid; i < BQ; i += NT) {
      int qi = q0 + i;
      sL[buf * BQ + i] = qi < T ? p.lse[stat_base + qi] * kLog2e : INFINITY;
      sDl[buf * BQ + i] = qi < T ? p.delta[stat_base + qi] : 0.f;
      sF[buf * BQ + i] = qi < T ? doc_first(p, row_base, qi) : 0;
    }
  };
  load_q_tile(qt_lo, 0);
  cp_async_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) dk[j][c] = dv[j][c] = 0.f;
  const int kr_lo = k0 + warp * 16 + (lane >> 2);  // this thread's keys: kr_lo, kr_lo + 8

  for (int i = 0; i < n_tiles; ++i) {
    const int qt = qt_lo + i, q0 = qt * BQ, buf = i & 1;
    cp_async_wait_all();
    __syncthreads();
    if (i + 1 < n_tiles) load_q_tile(qt + 1, buf ^ 1);
    cp_async_commit();
    const bf16_t* q_s = sQ + buf * BQ * LDS;
    const bf16_t* do_s = sdO + buf * BQ * LDS;
    const float* l_s = sL + buf * BQ;
    const float* d_s = sDl + buf * BQ;
    const int* f_s = sF + buf * BQ;

    float s[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
    for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[j][c] = dp[j][c] = 0.f;
    mma_abt<D, BQ / 8, LDS>(s, sK, warp * 16, q_s, lane);
    mma_abt<D, BQ / 8, LDS>(dp, sV, warp * 16, do_s, lane);

    // Element (j, c): key kr_lo + (c >> 1) * 8, query q0 + j*8 + (lane & 3)*2 + (c & 1).
    const bool masked = tile_needs_mask<BQ, BKV>(q0, k0, T, p.window, doc_first(p, row_base, min(T, q0 + BQ) - 1));
#pragma unroll
    for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        int ql = j * 8 + (lane & 3) * 2 + (c & 1);
        float pr = ex2(s[j][c] * p.scale_log2 - l_s[ql]);
        if (masked) {
          int ki = kr_lo + (c >> 1) * 8;
          if (!(visible(q0 + ql, ki, T, p.window, f_s[ql]) && ki < T)) pr = 0.f;
        }
        s[j][c] = pr;
        dp[j][c] = pr * (dp[j][c] - d_s[ql]);
      }
    mma_pb<BQ, D, LDS>(dv, s, do_s, lane);
    mma_pb<BQ, D, LDS>(dk, dp, q_s, lane);
  }
  cp_async_wait_all();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int ki = kr_lo + r * 8;
    if (ki >= T) continue;
    bf16_t* gk = p.dk + (row_base + ki) * p.stride + hoff;
    bf16_t* gv = p.dv + (row_base + ki) * p.stride + hoff;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      int col = j * 8 + (lane & 3) * 2;
      *reinterpret_cast<uint32_t*>(gk + col) =
          pack_bf16x2(dk[j][2 * r] * p.scale, dk[j][2 * r + 1] * p.scale);
      *reinterpret_cast<uint32_t*>(gv + col) = pack_bf16x2(dv[j][2 * r], dv[j][2 * r + 1]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, dQ (a separate pass, so that no floating-point atomics are needed and the result
// is deterministic). Block: NW warps, BR = 16*NW queries; key tiles of BC = 64.
// Per key tile: S = Q K^T, P = exp2(S scale log2e - lse log2e), dP = dO V^T,
// dS = P (dP - delta), dQ += dS K; finally dQ *= scale.
// Memory: reads Q, dO once, K and V once per query block; writes dQ once.
template <int D, int NW>
__global__ void __launch_bounds__(NW * 32) attention_bwd_dq_kernel(Params p) {
  constexpr int BR = 16 * NW, BC = 64, LDS = D + 8, NT = NW * 32;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16_t* sQ = reinterpret_cast<bf16_t*>(smem_raw);
  bf16_t* sdO = sQ + BR * LDS;
  bf16_t* sK = sdO + BR * LDS;      // [2][BC][LDS]
  bf16_t* sV = sK + 2 * BC * LDS;   // [2][BC][LDS]

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int qb = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z;
  const int T = p.T, q0 = qb * BR;
  const int64_t row_base = int64_t(b) * T;
  const int64_t hoff = int64_t(h) * D;
  const int64_t stat_base = (int64_t(b) * p.H + h) * T;
  const bf16_t* gk = p.k + row_base * p.stride + hoff;
  const bf16_t* gv = p.v + row_base * p.stride + hoff;
  const int64_t do_stride = int64_t(p.H) * D;

  int kt_lo, kt_hi;
  key_tile_range<BR, BC>(q0, T, p.window, doc_first(p, row_base, q0), kt_lo, kt_hi);
  const int n_tiles = kt_hi - kt_lo;
  const int doc_hi = doc_first(p, row_base, min(T, q0 + BR) - 1);

  load_tile<D, BR, LDS, NT>(sQ, p.q + (row_base + q0) * p.stride + hoff, p.stride, T - q0, tid);
  load_tile<D, BR, LDS, NT>(sdO, p.dout + (row_base + q0) * do_stride + hoff, do_stride, T - q0,
                            tid);
  {
    int kf = (kt_hi - 1) * BC;
    load_tile<D, BC, LDS, NT>(sK, gk + int64_t(kf) * p.stride, p.stride, T - kf, tid);
    load_tile<D, BC, LDS, NT>(sV, gv + int64_t(kf) * p.stride, p.stride, T - kf, tid);
  }
  cp_async_commit();

  const int r_lo = q0 + warp * 16 + (lane >> 2);
  float lse2[2], dl[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int qi = r_lo + r * 8;
    lse2[r] = qi < T ? p.lse[stat_base + qi] * kLog2e : INFINITY;
    dl[r] = qi < T ? p.delta[stat_base + qi] : 0.f;
  }
  float dq[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;

  for (int i = 0; i < n_tiles; ++i) {
    const int kt = kt_hi - 1 - i, k0 = kt * BC, buf = i & 1;
    cp_async_wait_all();
    __syncthreads();
    if (i + 1 < n_tiles) {
      int kn = k0 - BC;
      load_tile<D, BC, LDS, NT>(sK + (buf ^ 1) * BC * LDS, gk + int64_t(kn) * p.stride, p.stride,
                                T - kn, tid);
      load_tile<D, BC, LDS, NT>(sV + (buf ^ 1) * BC * LDS, gv + int64_t(kn) * p.stride, p.stride,
                                T - kn, tid);
    }
    cp_async_commit();
    const bf16_t* k_s = sK + buf * BC * LDS;
    const bf16_t* v_s = sV + buf * BC * LDS;

    float s[BC / 8][4], dp[BC / 8][4];
#pragma unroll
    for (int j = 0; j < BC / 8; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) s[j][c] = dp[j][c] = 0.f;
    mma_abt<D, BC / 8, LDS>(s, sQ, warp * 16, k_s, lane);
    mma_abt<D, BC / 8, LDS>(dp, sdO, warp * 16, v_s, lane);
    const bool masked = tile_needs_mask<BR, BC>(q0, k0, T, p.window, doc_hi);
    int first[2] = {0, 0};  // the starts of the rows' documents (masked tiles only)
    if (masked)
#pragma unroll
      for (int r = 0; r < 2; ++r) first[r] = r_lo + r * 8 < T ? doc_first(p, row_base, r_lo + r * 8) : 0;
#pragma unroll
    for (int j = 0; j < BC / 8; ++j)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float pr = ex2(s[j][c] * p.scale_log2 - lse2[c >> 1]);
        if (masked) {
          int qi = r_lo + (c >> 1) * 8, ki = k0 + j * 8 + (lane & 3) * 2 + (c & 1);
          if (!(visible(qi, ki, T, p.window, first[c >> 1]) && ki < T)) pr = 0.f;
        }
        dp[j][c] = pr * (dp[j][c] - dl[c >> 1]);
      }
    mma_pb<BC, D, LDS>(dq, dp, k_s, lane);
  }
  cp_async_wait_all();

#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int qi = r_lo + r * 8;
    if (qi >= T) continue;
    bf16_t* g = p.dq + (row_base + qi) * p.stride + hoff;
#pragma unroll
    for (int j = 0; j < D / 8; ++j)
      *reinterpret_cast<uint32_t*>(g + j * 8 + (lane & 3) * 2) =
          pack_bf16x2(dq[j][0 + 2 * r] * p.scale, dq[j][1 + 2 * r] * p.scale);
  }
}

// ---------------------------------------------------------------------------------------------
// Launch configuration: warps per block (4 or 8) of each kernel and query rows per warp of the
// forward (16 or 32), from kernels::attention_launch() (defaults measured on an H100,
// docs/ATTENTION.md; the environment overrides them, read once, at the first launch).
//
// Query tile of the dK/dV kernel: 64 at hd 64; 32 where the dK, dV accumulators take more
// registers (hd 96, 128).
template <int D>
constexpr int dkdv_bq() {
  return D == 64 ? 64 : 32;
}

// Calls f(std::integral_constant<int, D>{}) with the head dim D as a compile-time constant;
// the head dims here are those of attention_cuda_supports_head_dim.
template <class F>
void dispatch_head_dim(int64_t hd, F&& f) {
  switch (hd) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: fail("attention: no CUDA kernel for head dim {} (supported: {})", hd,
                  attention_cuda_head_dims());
  }
}

// Opt-in to more than 48 KiB of dynamic shared memory (per kernel and device; cheap).
template <class Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  COIL_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

Params make_params(const AttentionProblem& pr) {
  Params p{};
  p.stride = pr.qkv_stride;
  p.T = int(pr.seq);
  p.H = int(pr.heads);
  p.window = int(std::min<int64_t>(pr.window, int64_t(1) << 30));
  p.doc_start = pr.doc_start;
  p.scale = float(pr.scale);
  p.scale_log2 = float(pr.scale * 1.4426950408889634);
  return p;
}

void check_problem(const char* op, const AttentionProblem& pr, std::initializer_list<const void*> ptrs) {
  COIL_CHECK(attention_cuda_supports_head_dim(pr.head_dim),
             "{}: head dim {} is not supported on CUDA (supported: {})", op, pr.head_dim,
             attention_cuda_head_dims());
  COIL_CHECK(pr.seq < (int64_t(1) << 30) && pr.heads <= 65535 && pr.batch <= 65535,
             "{}: shape out of range (T {} < 2^30, H {} <= 65535, B {} <= 65535)", op, pr.seq,
             pr.heads, pr.batch);
  COIL_CHECK(pr.qkv_stride % 8 == 0, "{}: token stride {} must be a multiple of 8 elements", op,
             pr.qkv_stride);
  for (const void* q : ptrs)
    COIL_CHECK(reinterpret_cast<uintptr_t>(q) % 16 == 0,
               "{}: operands must be 16-byte aligned (a narrowed view?)", op);
}

template <int D, int NW, int MT>
void launch_forward(Params p, int B) {
  constexpr int BR = 16 * MT * NW, BC = 64, LDS = D + 8;
  size_t smem = size_t(BR + 4 * BC) * LDS * sizeof(bf16_t);
  auto kernel = attention_fwd_kernel<D, NW, MT>;
  set_smem(kernel, smem);
  dim3 grid((p.T + BR - 1) / BR, p.H, B);
  kernel<<<grid, NW * 32, smem, coil::cuda::compute_stream()>>>(p);
  COIL_CUDA_CHECK_LAUNCH("attention_fwd", "B {} T {} H {} hd {} window {} warps {} rows/warp {}",
                         B, p.T, p.H, D, p.window, NW, 16 * MT);
}

template <int D>
void forward_impl(Params p, int B, const AttentionLaunch& launch) {
  // 32 rows per warp (4 warps) holds two O accumulators in registers: hd 64 and 96 only.
  // H100, causal T 2048-8192: 32 rows per warp is 5-12% faster than 16 (hd 64, 96; 4% slower
  // with window 512); with 16, 4 warps beat 8 by 7-28% at every head dim.
  if constexpr (D <= 96) {
    if (launch.fwd_rows == 32) return launch_forward<D, 4, 2>(p, B);
  }
  if (launch.fwd_warps == 8) launch_forward<D, 8, 1>(p, B);
  else launch_forward<D, 4, 1>(p, B);
}

template <int D, int NW>
void launch_dkdv(Params p, int B, cudaStream_t stream) {
  constexpr int BQ = dkdv_bq<D>(), BKV = 16 * NW, LDS = D + 8;
  size_t smem = size_t(2 * BKV + 4 * BQ) * LDS * sizeof(bf16_t) + 4 * BQ * sizeof(float) + 2 * BQ * sizeof(int);
  auto kernel = attention_bwd_dkdv_kernel<D, NW, BQ>;
  set_smem(kernel, smem);
  dim3 grid((p.T + BKV - 1) / BKV, p.H, B);
  kernel<<<grid, NW * 32, smem, stream>>>(p);
  COIL_CUDA_CHECK_LAUNCH("attention_bwd_dkdv", "B {} T {} H {} hd {} window {} warps {}", B, p.T,
                         p.H, D, p.window, NW);
}

template <int D, int NW>
void launch_dq(Params p, int B, cudaStream_t stream) {
  constexpr int BR = 16 * NW, BC = 64, LDS = D + 8;
  size_t smem = size_t(2 * BR + 4 * BC) * LDS * sizeof(bf16_t);
  auto kernel = attention_bwd_dq_kernel<D, NW>;
  set_smem(kernel, smem);
  dim3 grid((p.T + BR - 1) / BR, p.H, B);
  kernel<<<grid, NW * 32, smem, stream>>>(p);
  COIL_CUDA_CHECK_LAUNCH("attention_bwd_dq", "B {} T {} H {} hd {} window {} warps {}", B, p.T,
                         p.H, D, p.window, NW);
}

// delta = rowsum(dO * O), the first step of either backward.
template <int D>
void launch_delta(Params p, int B, cudaStream_t stream) {
  const int64_t rows = int64_t(B) * p.T * p.H;
  const int64_t blocks = (rows * 32 + 255) / 256;
  attention_bwd_delta_kernel<D><<<unsigned(blocks), 256, 0, stream>>>(p, rows);
  COIL_CUDA_CHECK_LAUNCH("attention_bwd_delta", "B {} T {} H {} hd {}", B, p.T, p.H, D);
}

// The portable dK/dV and dQ kernels (after launch_delta).
template <int D>
void backward_impl(Params p, int B, const AttentionLaunch& launch, cudaStream_t stream) {
  // H100: 4 warps for both backward kernels at every head dim (8 is 2-17% slower).
  if (launch.dkdv_warps == 8) launch_dkdv<D, 8>(p, B, stream);
  else launch_dkdv<D, 4>(p, B, stream);
  if (launch.dq_warps == 8) launch_dq<D, 8>(p, B, stream);
  else launch_dq<D, 4>(p, B, stream);
}

// Whether the Hopper kernels (kernels/cuda/attention_hopper{,_backward}.cu) run this problem
// in the direction whose setting is `kernel` (attention_forward_kernel() or
// attention_backward_kernel()); a forced Hopper kernel that cannot run is an error there.
bool use_hopper(AttentionKernel kernel, const AttentionProblem& pr) {
  switch (kernel) {
    case AttentionKernel::portable: return false;
    case AttentionKernel::hopper: return true;
    case AttentionKernel::automatic: break;
  }
  return attention_hopper_unsupported(pr.head_dim).empty();
}

}  // namespace

void attention_forward(const AttentionProblem& pr, const void* q, const void* k, const void* v,
                       void* out, float* lse) {
  check_problem("attention_forward", pr, {q, k, v, out});
  COIL_CHECK(pr.dtype == DType::bf16, "attention_forward: the CUDA kernel takes bf16, got {}",
             dtype_name(pr.dtype));
  if (use_hopper(attention_forward_kernel(), pr)) return attention_forward_hopper(pr, q, k, v, out, lse);
  Params p = make_params(pr);
  p.q = static_cast<const bf16_t*>(q);
  p.k = static_cast<const bf16_t*>(k);
  p.v = static_cast<const bf16_t*>(v);
  p.out = static_cast<bf16_t*>(out);
  p.lse = lse;
  dispatch_head_dim(pr.head_dim,
                    [&](auto d) { forward_impl<decltype(d)::value>(p, int(pr.batch), attention_launch()); });
}

void attention_backward(const AttentionProblem& pr, const void* dout, const void* q,
                        const void* k, const void* v, const void* out, const float* lse,
                        void* dq, void* dk, void* dv) {
  check_problem("attention_backward", pr, {dout, q, k, v, out, dq, dk, dv});
  COIL_CHECK(pr.dtype == DType::bf16, "attention_backward: the CUDA kernel takes bf16, got {}",
             dtype_name(pr.dtype));
  Tensor delta = Tensor::empty({pr.batch, pr.heads, pr.seq}, DType::f32, pr.device);
  Params p = make_params(pr);
  p.q = static_cast<const bf16_t*>(q);
  p.k = static_cast<const bf16_t*>(k);
  p.v = static_cast<const bf16_t*>(v);
  p.o = static_cast<const bf16_t*>(out);
  p.dout = static_cast<const bf16_t*>(dout);
  p.dq = static_cast<bf16_t*>(dq);
  p.dk = static_cast<bf16_t*>(dk);
  p.dv = static_cast<bf16_t*>(dv);
  p.lse = const_cast<float*>(lse);
  p.delta = delta.data<float>();
  cudaStream_t stream = coil::cuda::compute_stream();
  dispatch_head_dim(pr.head_dim, [&](auto d) { launch_delta<decltype(d)::value>(p, int(pr.batch), stream); });
  if (use_hopper(attention_backward_kernel(), pr))
    return attention_backward_hopper(pr, dout, q, k, v, lse, p.delta, dq, dk, dv);
  dispatch_head_dim(pr.head_dim, [&](auto d) {
    backward_impl<decltype(d)::value>(p, int(pr.batch), attention_launch(), stream);
  });
}

}  // namespace coil::kernels::cuda
