// Causal attention backward written for Hopper (sm_90a): the dK/dV and dQ passes of the portable
// backward (kernels/cuda/attention.cu) with warpgroup matrix instructions (wgmma, bf16 -> fp32)
// for the five products, Q/K/V/dO tiles brought into shared memory by TMA, and a producer warp
// feeding two consumer warpgroups through mbarriers, as the Hopper forward
// (kernels/cuda/attention_hopper.cu, shared pieces in kernels/cuda/attention_hopper.cuh).
// Same contract as the portable dK/dV and dQ kernels: lse from the forward, delta =
// rowsum(dO * O) from the portable delta kernel, causal mask, window, documents; deterministic
// (no atomics: every element of dQ, dK, dV is written by one block, each sums its products in
// a fixed order). Head dims 64 and 128, and 96 through the hd-128 kernels with their tiles
// zero-padded to 128 columns by TMA. Design in docs/ATTENTION.md, "Hopper backward" and
// "Hopper head dim 96".
//
// No operand needs a transpose that wgmma cannot read: the dK/dV kernel computes the
// transposed scores S^T = K Q^T and dP^T = V dO^T directly (keys are the M rows of its
// warpgroups), so P^T and dS^T come out of the accumulators in the layout of the A operand of
// dV += P^T dO and dK += dS^T Q and go there from registers (acc_to_a_frags); the B operands
// dO and Q of those products (k = queries, n = head dim) are read MN-major from the same
// shared tiles with imm-trans-b, as V in the forward's O += P V. The dQ kernel is the forward's
// structure: S = Q K^T and dP = dO V^T K-major from shared memory, dS from registers, and K
// MN-major (imm-trans-b) in dQ += dS K.
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention_hopper.cuh"
#include "kernels/cuda/attention_tiles.cuh"

namespace coil::kernels::cuda {
namespace {

using namespace hopper;

// dK/dV: a block owns kBKV keys (64 per consumer warpgroup) and streams query tiles of kBQ.
// dQ: a block owns kBR queries (64 per consumer warpgroup) and streams key tiles of BC.
constexpr int kBKV = 2 * kRowsPerWarpgroup;
constexpr int kBQ = 64;
constexpr int kBR = 2 * kRowsPerWarpgroup;
// Block: two consumer warpgroups (warps 0-7) and a producer warpgroup (warps 8-11, of which
// warp 8 works), which hands its registers to the consumers (kProducerRegisters,
// kConsumerRegisters in attention_hopper.cuh): their accumulators need more than 168 (dK/dV
// at hd 128: dK and dV 128, S^T and dP^T 64).
constexpr int kThreads = kProducerWarpgroupThreads;

// Both kernels overlap across tiles (docs/ATTENTION.md, "Hopper backward"): each consumer
// warpgroup issues the next tile's first products before waiting for the previous tile's
// accumulating ones (always in dQ; in dK/dV where the registers allow, dkdv_overlap), with
// 4 stages and 128-column wgmma where a product's N is 128 (wide_wgmma_n).
constexpr int kBackwardStages = 4;
// Whether the dK/dV kernel overlaps across query tiles: S^T, dP^T (fp32) of tile i and
// P^T, dS^T (bf16 A fragments) of tile i - 1 live beside dK and dV. At hd 64 that is
// 32 + 32 + 32 + 32 + 16 + 16 registers; at hd 128 dK and dV alone take 128 and the rest
// does not fit in 240 (overlapped there, nvcc 13.0 spills 276 bytes), so hd 128 keeps the
// serial order (with the stages and wide products).
template <int D>
constexpr bool dkdv_overlap() {
  return D == 64;
}

// Key tile of the dQ kernel: 128 at hd 64 (S, dP and dQ accumulators: 64 + 64 + 32 registers,
// and 32 for dS of the previous tile when overlapped), 64 at hd 128 (32 + 32 + 64, and 16).
template <int D>
constexpr int dq_key_tile() {
  return D == 64 ? 128 : 64;
}

struct BackwardParams {
  const float* lse;           // (B, H, T), natural log
  const float* delta;         // (B, H, T): rowsum(dO * O)
  const int32_t* doc_start;   // (B, T) or null
  bf16_t* dq;                 // q, k, v layout: token stride `stride`
  bf16_t* dk;
  bf16_t* dv;
  int64_t stride;
  int T, H, window;
  int head_dim;               // the problem's: D, or 96 run as zero-padded D = 128
  float scale, scale_log2;
};

// The per-query values of one query tile of the dK/dV kernel, written into shared memory by the
// producer warp beside the tile's Q and dO: lse in log2 units (+inf past T, so P = 0 there),
// delta (0 past T), and the document starts (for the element mask).
struct QueryStats {
  float lse2[kBQ];
  float delta[kBQ];
  int32_t first[kBQ];
};

// Dynamic shared memory of the two kernels: 1 KiB alignment slack, the block's own tiles, the
// stages, the dK/dV stats, the barriers.
template <int D, int Stages>
constexpr size_t dkdv_smem_bytes() {
  return 1024 + size_t(2 * kBKV + 2 * Stages * kBQ) * D * 2 + Stages * sizeof(QueryStats) +
         (1 + 2 * Stages) * sizeof(uint64_t);
}
template <int D, int BC, int Stages>
constexpr size_t dq_smem_bytes() {
  return 1024 + size_t(2 * kBR + 2 * Stages * BC) * D * 2 + KeyTileBarriers::words(Stages) * sizeof(uint64_t);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// Where one consumer warpgroup of the dK/dV kernel stands: its keys' K and V (k_addr, v_addr,
// its first row), this thread's keys kr_lo and kr_lo + 8, the first key wk0 of the warpgroup.
struct KeyRows {
  uint32_t k_addr, v_addr;
  int wk0, kr_lo;
};

// S^T = K Q^T and dP^T = V dO^T of one query tile over the head dim (all four K-major), issued
// as two groups after the caller's wgmma_fence; q_addr, do_addr the stage's tiles.
template <int D>
__device__ __forceinline__ void issue_st_dpt(float (&st)[kBQ / 64][32], float (&dpt)[kBQ / 64][32],
                                             const KeyRows& kr, uint32_t q_addr, uint32_t do_addr) {
  wgmma_abt_ss<D, kBQ>(st, kr.k_addr, kBKV * kRowBytes, q_addr, kBQ * kRowBytes);
  wgmma_abt_ss<D, kBQ>(dpt, kr.v_addr, kBKV * kRowBytes, do_addr, kBQ * kRowBytes);
}

// After issue_st_dpt and `Later` further groups: waits for S^T, turns it into P^T in place
// while dP^T completes, waits for dP^T and turns it into dS^T = P^T (dP^T - delta) in place.
// Element e of block n: key kr_lo + 8 ((e >> 1) & 1), query q0 + ql,
// ql = 64 n + 8 (e >> 2) + 2 (lane % 4) + (e & 1).
template <int Later>
__device__ __forceinline__ void probabilities_t(float (&st)[kBQ / 64][32], float (&dpt)[kBQ / 64][32],
                                                const QueryStats& stats, int q0, const KeyRows& kr,
                                                const BackwardParams& p) {
  const int lane = threadIdx.x % 32;
  wgmma_wait<Later + 1>();
  fence_registers(st);
  const bool masked = tile_needs_mask<kBQ, kRowsPerWarpgroup>(q0, kr.wk0, p.T, p.window,
                                                              stats.first[min(p.T, q0 + kBQ) - 1 - q0]);
#pragma unroll
  for (int n = 0; n < kBQ / 64; ++n)
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const int ql = 64 * n + 8 * (e >> 2) + 2 * (lane % 4) + (e & 1);
      float pr = ex2(fmaf(st[n][e], p.scale_log2, -stats.lse2[ql]));
      if (masked) {
        const int ki = kr.kr_lo + 8 * ((e >> 1) & 1);
        if (!(visible(q0 + ql, ki, p.T, p.window, stats.first[ql]) && ki < p.T)) pr = 0.f;
      }
      st[n][e] = pr;
    }
  wgmma_wait<Later>();
  fence_registers(dpt);
#pragma unroll
  for (int n = 0; n < kBQ / 64; ++n)
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const int ql = 64 * n + 8 * (e >> 2) + 2 * (lane % 4) + (e & 1);
      dpt[n][e] = st[n][e] * (dpt[n][e] - stats.delta[ql]);
    }
}

// One consumer warpgroup of the dQ kernel: its queries' Q and dO (q_addr, do_addr, its first
// row), this thread's rows r_lo and r_lo + 8 with their lse (log2 units), delta and document
// starts, and doc_hi, the document start of the block's last query.
struct QueryRows {
  uint32_t q_addr, do_addr;
  int r_lo, doc_hi;
  float lse2[2], delta[2];
  int first[2];
};

// S = Q K^T and dP = dO V^T of one key tile over the head dim (all four K-major), as W-column
// products, issued as two groups after the caller's wgmma_fence.
template <int D, int BC, int W>
__device__ __forceinline__ void issue_s_dp(float (&s)[BC / 64][32], float (&dp)[BC / 64][32], const QueryRows& qr,
                                           uint32_t k_addr, uint32_t v_addr) {
  wgmma_abt_ss<D, BC, W>(s, qr.q_addr, kBR * kRowBytes, k_addr, BC * kRowBytes);
  wgmma_abt_ss<D, BC, W>(dp, qr.do_addr, kBR * kRowBytes, v_addr, BC * kRowBytes);
}

// After issue_s_dp and `Later` further groups: P in place while dP completes, then
// dS = P (dP - delta) in place. s[n][4j + c]: row r_lo + 8 (c >> 1), key
// k0 + 64n + 8j + 2 (lane % 4) + (c & 1); q0 the block's first query (for the mask test).
template <int BC, int Later>
__device__ __forceinline__ void probabilities(float (&s)[BC / 64][32], float (&dp)[BC / 64][32],
                                              const QueryRows& qr, int q0, int k0, const BackwardParams& p) {
  const int lane = threadIdx.x % 32;
  wgmma_wait<Later + 1>();
  fence_registers(s);
  const bool masked = tile_needs_mask<kBR, BC>(q0, k0, p.T, p.window, qr.doc_hi);
#pragma unroll
  for (int n = 0; n < BC / 64; ++n)
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const int r = (e >> 1) & 1;
      float pr = ex2(fmaf(s[n][e], p.scale_log2, -qr.lse2[r]));
      if (masked) {
        const int qi = qr.r_lo + 8 * r, ki = k0 + 64 * n + 8 * (e >> 2) + 2 * (lane % 4) + (e & 1);
        if (!(visible(qi, ki, p.T, p.window, qr.first[r]) && ki < p.T)) pr = 0.f;
      }
      s[n][e] = pr;
    }
  wgmma_wait<Later>();
  fence_registers(dp);
#pragma unroll
  for (int n = 0; n < BC / 64; ++n)
#pragma unroll
    for (int e = 0; e < 32; ++e) dp[n][e] = s[n][e] * (dp[n][e] - qr.delta[(e >> 1) & 1]);
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---------------------------------------------------------------------------------------------
// dK and dV. Grid (key blocks, H, B), key block 0 (the most query tiles) first; 384 threads:
//   producer warpgroup (warp 8 works): one thread loads the block's K and V (kBKV x D each,
//     once) by TMA and,
//     for each query tile that can see the block (from the diagonal up to query_end), Q and dO
//     (kBQ x D each) into stage i % Stages; the warp's 32 lanes write the tile's QueryStats
//     beside them. A stage is reused after every consumer warp released it (q_empty).
//   warps 0-7 (two consumer warpgroups, keys k0 + 64 wg .. + 63 each), per query tile:
//     S^T  = K Q^T           wgmma m64n64k16, K and Q K-major from shared memory
//     dP^T = V dO^T          same, V and dO (committed as a second group)
//     P^T  = exp2(S^T scale log2e - lse log2e), masked entries 0   (while dP^T completes)
//     dS^T = P^T (dP^T - delta)
//     dV  += P^T dO          wgmma, P^T from registers, dO MN-major (imm-trans-b)
//     dK  += dS^T Q          wgmma, dS^T from registers, Q MN-major
//     then release the stage. A warpgroup whose keys no query of the tile can see (the
//     diagonal tile of the upper 64 keys, the far window edge) only releases it.
//   At hd 128 (and 96) in that order, waiting for dV and dK before the next tile. At hd 64
//   overlapped (dkdv_overlap): the hidden tiles are a prefix and a suffix of a
//   warpgroup's tiles (tiles_hidden: before the diagonal, past the window), so the visible
//   ones run as the forward's loop: the first one's S^T, dP^T, P^T, dS^T (packed as A
//   fragments); then per visible tile i: issue S^T_i, dP^T_i, dV += P^T_{i-1} dO_{i-1} and
//   dK += dS^T_{i-1} Q_{i-1} (four groups), P^T_i and dS^T_i while the dV, dK products run,
//   wait for them, release the stage of tile i - 1, pack tile i's; after the last visible
//   tile its dV, dK products and release; the hidden suffix only released.
// Epilogue: dK scale and dV as bf16 from the registers. Deterministic: each key's dK and dV
// are summed by one warpgroup over the query tiles in order.
// Memory: reads K, V once and Q, dO, lse, delta once per key block (L2-resident across the
// blocks of a head), writes dK, dV once; shared memory 2 kBKV D + 2 Stages kBQ D bf16 and
// Stages QueryStats.
template <int D>
__global__ void __launch_bounds__(kThreads, 1)
    attention_bwd_dkdv_hopper_kernel(const __grid_constant__ CUtensorMap q_map,
                                     const __grid_constant__ CUtensorMap do_map,
                                     const __grid_constant__ CUtensorMap k_map,
                                     const __grid_constant__ CUtensorMap v_map, BackwardParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kDBlocks = D / kBlockCols;  // 64-column blocks of a row of K, V, Q, dO, dK, dV
  constexpr int kSBlocks = kBQ / 64;        // 64-query blocks of a row of S^T
  constexpr int Stages = kBackwardStages;
  constexpr int kWide = wide_wgmma_n(D);  // dV += P^T dO, dK += dS^T Q
  constexpr uint32_t kKVBytes = tile_bytes<D>(kBKV), kQBytes = tile_bytes<D>(kBQ);

  extern __shared__ unsigned char smem_raw[];
  unsigned char* sK = align_1024(smem_raw);        // [kDBlocks][kBKV][64]
  unsigned char* sV = sK + kKVBytes;               // [kDBlocks][kBKV][64]
  unsigned char* sQ = sV + kKVBytes;               // [Stages][kDBlocks][kBQ][64]
  unsigned char* sdO = sQ + Stages * kQBytes;      // [Stages][kDBlocks][kBQ][64]
  QueryStats* stats = reinterpret_cast<QueryStats*>(sdO + Stages * kQBytes);  // [Stages]
  uint64_t* kv_full = reinterpret_cast<uint64_t*>(stats + Stages);  // K and V have landed
  uint64_t* q_full = kv_full + 1;       // [Stages]: Q, dO and the stats of the stage are in
  uint64_t* q_empty = q_full + Stages;  // [Stages]: every consumer warp is done with it

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y, b = blockIdx.z;
  const int T = p.T, k0 = blockIdx.x * kBKV;
  const int64_t row_base = int64_t(b) * T, stat_base = (int64_t(b) * p.H + h) * T;
  const int q_end = query_end(min(T, k0 + kBKV) - 1, T, p.window, p.doc_start, row_base);
  const int qt_lo = k0 / kBQ, n_tiles = (q_end + kBQ - 1) / kBQ - qt_lo;

  if (threadIdx.x == 0) {
    mbar_init(kv_full, 1);
    for (int s = 0; s < Stages; ++s) {
      mbar_init(&q_full[s], 32);  // the producer warp's lanes (lane 0's with the TMA bytes)
      mbar_init(&q_empty[s], kConsumerWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (warp >= kConsumerWarps) {  // producer warpgroup: warp 8 works, 9-11 only hand back registers
    setmaxnreg_dec<kProducerRegisters>();
    if (warp != kConsumerWarps) return;
    if (lane == 0) {
      mbar_arrive_expect_tx(kv_full, 2 * kKVBytes);
      tma_load_tile<D>(sK, kBKV, &k_map, kv_full, h, k0, b);
      tma_load_tile<D>(sV, kBKV, &v_map, kv_full, h, k0, b);
    }
    for (int i = 0; i < n_tiles; ++i) {
      const int s = i % Stages, q0 = (qt_lo + i) * kBQ;
      if (i >= Stages) mbar_wait(&q_empty[s], (i / Stages - 1) & 1);
      QueryStats& st = stats[s];
      for (int j = lane; j < kBQ; j += 32) {
        const int qi = q0 + j;
        st.lse2[j] = qi < T ? p.lse[stat_base + qi] * kLog2e : INFINITY;
        st.delta[j] = qi < T ? p.delta[stat_base + qi] : 0.f;
        st.first[j] = qi < T ? doc_first(p.doc_start, row_base, qi) : 0;
      }
      // Each lane's arrival releases its stats stores; lane 0's also announces the TMA bytes,
      // so the phase completes when all 32 lanes have arrived and both tiles have landed.
      if (lane == 0) {
        mbar_arrive_expect_tx(&q_full[s], 2 * kQBytes);
        tma_load_tile<D>(sQ + s * kQBytes, kBQ, &q_map, &q_full[s], h, q0, b);
        tma_load_tile<D>(sdO + s * kQBytes, kBQ, &do_map, &q_full[s], h, q0, b);
      } else {
        mbar_arrive(&q_full[s]);
      }
    }
    await_releases<Stages>(q_empty, n_tiles);
    return;
  }

  // Consumers: warpgroup wg owns keys wk0 .. wk0 + 63; this thread keys kr_lo and kr_lo + 8
  // (the rows of its accumulator fragments).
  setmaxnreg_inc<kConsumerRegisters>();
  const int wg = warp / 4;
  KeyRows kr;
  kr.wk0 = k0 + wg * kRowsPerWarpgroup;
  kr.kr_lo = kr.wk0 + (warp % 4) * 16 + lane / 4;
  kr.k_addr = smem_addr(sK) + wg * kRowsPerWarpgroup * kRowBytes;
  kr.v_addr = smem_addr(sV) + wg * kRowsPerWarpgroup * kRowBytes;
  float dk[kDBlocks][32], dv[kDBlocks][32], st_acc[kSBlocks][32], dpt[kSBlocks][32];
  for (int blk = 0; blk < kDBlocks; ++blk)
    for (int e = 0; e < 32; ++e) dk[blk][e] = dv[blk][e] = 0.f;
  for (int n = 0; n < kSBlocks; ++n)
    for (int e = 0; e < 32; ++e) st_acc[n][e] = dpt[n][e] = 0.f;
  const uint32_t q_base = smem_addr(sQ), do_base = smem_addr(sdO);
  auto query_tile = [&](int i) { return (qt_lo + i) * kBQ; };
  auto hidden = [&](int i) { return tiles_hidden(query_tile(i), kBQ, kr.wk0, kRowsPerWarpgroup, T, p.window); };
  // Waits until tile i's stage has landed.
  auto wait_full = [&](int i) { mbar_wait_untimed(&q_full[i % Stages], (i / Stages) & 1); };
  mbar_wait_untimed(kv_full, 0);

  if constexpr (!dkdv_overlap<D>()) {
    for (int i = 0; i < n_tiles; ++i) {
      const int s = i % Stages, q0 = query_tile(i);
      wait_full(i);
      if (!hidden(i)) {
        const uint32_t q_addr = q_base + s * kQBytes, do_addr = do_base + s * kQBytes;
        fence_registers(st_acc);
        fence_registers(dpt);
        wgmma_fence();
        issue_st_dpt<D>(st_acc, dpt, kr, q_addr, do_addr);
        probabilities_t<0>(st_acc, dpt, stats[s], q0, kr, p);
        // dV += P^T dO and dK += dS^T Q: A from registers, dO and Q (queries x head dim) MN-major.
        add_pb<kBQ, D, kWide>(dv, st_acc, do_addr, kBQ * kRowBytes);
        add_pb<kBQ, D, kWide>(dk, dpt, q_addr, kBQ * kRowBytes);
      }
      release_stage(&q_empty[s]);
    }
  } else {
    uint32_t pt[kBQ / 16][4], dst[kBQ / 16][4];  // P^T, dS^T of the pending tile as A fragments
    int i = 0;
    for (; i < n_tiles; ++i) {  // the hidden prefix
      wait_full(i);
      if (!hidden(i)) break;
      release_stage(&q_empty[i % Stages]);
    }
    if (i < n_tiles) {
      int pending = i % Stages;  // stage of the tile whose dV, dK products are still to run
      fence_registers(st_acc);
      fence_registers(dpt);
      wgmma_fence();
      issue_st_dpt<D>(st_acc, dpt, kr, q_base + pending * kQBytes, do_base + pending * kQBytes);
      probabilities_t<0>(st_acc, dpt, stats[pending], query_tile(i), kr, p);
      acc_to_a_frags<kBQ>(pt, st_acc);
      acc_to_a_frags<kBQ>(dst, dpt);
      for (++i; i < n_tiles; ++i) {
        const int s = i % Stages;
        wait_full(i);
        if (hidden(i)) break;  // the hidden suffix
        fence_registers(st_acc);
        fence_registers(dpt);
        fence_registers(dv);
        fence_registers(dk);
        fence_registers(pt);
        fence_registers(dst);
        wgmma_fence();
        issue_st_dpt<D>(st_acc, dpt, kr, q_base + s * kQBytes, do_base + s * kQBytes);
        wgmma_ab_rs<kBQ, D, kWide>(dv, pt, do_base + pending * kQBytes, kBQ * kRowBytes);
        wgmma_ab_rs<kBQ, D, kWide>(dk, dst, q_base + pending * kQBytes, kBQ * kRowBytes);
        probabilities_t<2>(st_acc, dpt, stats[s], query_tile(i), kr, p);
        wgmma_wait<0>();
        fence_registers(dv);
        fence_registers(dk);
        fence_registers(pt);  // the pending tile's fragments stay until its products are done
        fence_registers(dst);
        release_stage(&q_empty[pending]);
        acc_to_a_frags<kBQ>(pt, st_acc);
        acc_to_a_frags<kBQ>(dst, dpt);
        pending = s;
      }
      add_ab<kBQ, D, kWide>(dv, pt, do_base + pending * kQBytes, kBQ * kRowBytes);
      add_ab<kBQ, D, kWide>(dk, dst, q_base + pending * kQBytes, kBQ * kRowBytes);
      release_stage(&q_empty[pending]);
      for (; i < n_tiles; ++i) {  // the hidden suffix (tile i's stage may have been waited for)
        wait_full(i);
        release_stage(&q_empty[i % Stages]);
      }
    }
  }

  // Epilogue: this thread's keys kr_lo and kr_lo + 8.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int ki = kr.kr_lo + 8 * r;
    if (ki >= T) continue;
    const int64_t at = (row_base + ki) * p.stride + int64_t(h) * p.head_dim;
    store_acc_row<D>(p.dk + at, dk, r, p.scale, p.head_dim);
    store_acc_row<D>(p.dv + at, dv, r, 1.f, p.head_dim);
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// dQ. Grid (query blocks, H, B), query blocks longest-first; 384 threads:
//   producer warpgroup (one thread of warp 8 works): TMA loads of the block's Q and dO (kBR x D
//     each, once) and, for each visible key tile from the diagonal backwards (key_tile_range,
//     as the forward), K and V (BC x D each) into stage i % Stages (produce_key_tiles, the
//     forward's loop); at the end it waits for the last releases (await_releases);
//   warps 0-7 (two consumer warpgroups, queries q0 + 64 wg .. + 63 each), per key tile:
//     S  = Q K^T             wgmma, Q and K K-major from shared memory
//     dP = dO V^T            same, dO and V (a second group)
//     P  = exp2(S scale log2e - lse log2e), masked entries 0   (while dP completes)
//     dS = P (dP - delta)
//     dQ += dS K             wgmma, dS from registers, K MN-major (imm-trans-b)
//     then release the stage. A warpgroup whose queries see none of the tile's keys by
//     position (for warpgroup 0, the upper 64 keys of the diagonal at BC = 64) only releases it.
//   Overlapped across tiles: the hidden tiles are a prefix (keys after the queries) and a suffix (past the
//   window) of a warpgroup's tiles, so the visible ones run as the forward's loop: the first
//   one's S, dP, P, dS (packed as A fragments); then per visible tile i: issue S_i, dP_i and
//   dQ += dS_{i-1} K_{i-1} (three groups), P_i and dS_i while dQ's product runs, wait for it,
//   release the stage of tile i - 1, pack dS_i; after the last visible tile its dQ product
//   and release; the hidden suffix only released.
// Epilogue: dQ scale as bf16 from the registers. Deterministic: each query's dQ is summed by
// one warpgroup over the key tiles in order.
// Memory: reads Q, dO, lse, delta once and K, V once per query block (L2-resident), writes dQ
// once; shared memory 2 kBR D + 2 Stages BC D bf16.
template <int D, int BC>
__global__ void __launch_bounds__(kThreads, 1)
    attention_bwd_dq_hopper_kernel(const __grid_constant__ CUtensorMap q_map,
                                   const __grid_constant__ CUtensorMap do_map,
                                   const __grid_constant__ CUtensorMap k_map,
                                   const __grid_constant__ CUtensorMap v_map, BackwardParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kDBlocks = D / kBlockCols;  // 64-column blocks of a row of Q, dO, K, V, dQ
  constexpr int kSBlocks = BC / 64;         // 64-key blocks of a row of S
  constexpr int Stages = kBackwardStages;
  constexpr int kWideS = wide_wgmma_n(BC), kWideDQ = wide_wgmma_n(D);
  constexpr uint32_t kQBytes = tile_bytes<D>(kBR), kKVBytes = tile_bytes<D>(BC);

  extern __shared__ unsigned char smem_raw[];
  unsigned char* sQ = align_1024(smem_raw);        // [kDBlocks][kBR][64]
  unsigned char* sdO = sQ + kQBytes;               // [kDBlocks][kBR][64]
  unsigned char* sK = sdO + kQBytes;               // [Stages][kDBlocks][BC][64]
  unsigned char* sV = sK + Stages * kKVBytes;      // [Stages][kDBlocks][BC][64]
  const KeyTileBarriers bars = key_tile_barriers<Stages>(sV + Stages * kKVBytes);  // rows_full: Q and dO

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int T = p.T;
  const QueryBlock qblock = query_block<kBR, BC>(T, p.window, p.doc_start);
  const int h = qblock.h, b = qblock.b, q0 = qblock.q0, kt_hi = qblock.kt_hi, n_tiles = qblock.n_tiles;
  const int64_t row_base = qblock.row_base, stat_base = (int64_t(b) * p.H + h) * T;
  __syncthreads();

  if (warp >= kConsumerWarps) {  // producer warpgroup: one thread of warp 8 works
    setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == kConsumerWarps * 32) {
      mbar_arrive_expect_tx(bars.rows_full, 2 * kQBytes);
      tma_load_tile<D>(sQ, kBR, &q_map, bars.rows_full, h, q0, b);
      tma_load_tile<D>(sdO, kBR, &do_map, bars.rows_full, h, q0, b);
      produce_key_tiles<D, BC, Stages>(sK, sV, bars, &k_map, &v_map, h, b, kt_hi, n_tiles);
      await_releases<Stages>(bars.kv_empty, n_tiles);
    }
    return;
  }

  // Consumers: warpgroup wg owns queries q0 + 64 wg .. + 63; this thread rows r_lo, r_lo + 8.
  setmaxnreg_inc<kConsumerRegisters>();
  const int wg = warp / 4;
  const int wq0 = q0 + wg * kRowsPerWarpgroup;
  QueryRows qr;
  qr.r_lo = wq0 + (warp % 4) * 16 + lane / 4;
  qr.doc_hi = doc_first(p.doc_start, row_base, min(T, q0 + kBR) - 1);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = qr.r_lo + 8 * r;
    qr.lse2[r] = qi < T ? p.lse[stat_base + qi] * kLog2e : INFINITY;
    qr.delta[r] = qi < T ? p.delta[stat_base + qi] : 0.f;
    qr.first[r] = qi < T ? doc_first(p.doc_start, row_base, qi) : 0;
  }
  qr.q_addr = smem_addr(sQ) + wg * kRowsPerWarpgroup * kRowBytes;
  qr.do_addr = smem_addr(sdO) + wg * kRowsPerWarpgroup * kRowBytes;

  float dq[kDBlocks][32], s_acc[kSBlocks][32], dp[kSBlocks][32];
  for (int blk = 0; blk < kDBlocks; ++blk)
    for (int e = 0; e < 32; ++e) dq[blk][e] = 0.f;
  for (int n = 0; n < kSBlocks; ++n)
    for (int e = 0; e < 32; ++e) s_acc[n][e] = dp[n][e] = 0.f;
  const uint32_t k_base = smem_addr(sK), v_base = smem_addr(sV);
  auto key_tile = [&](int i) { return (kt_hi - 1 - i) * BC; };
  auto hidden = [&](int i) { return tiles_hidden(wq0, kRowsPerWarpgroup, key_tile(i), BC, T, p.window); };
  // Waits until tile i's K and V have landed.
  auto wait_full = [&](int i) {
    mbar_wait_untimed(&bars.k_full[i % Stages], (i / Stages) & 1);
    mbar_wait_untimed(&bars.v_full[i % Stages], (i / Stages) & 1);
  };
  mbar_wait_untimed(bars.rows_full, 0);

  uint32_t ds[BC / 16][4];  // dS of the pending tile as A fragments
  int i = 0;
  for (; i < n_tiles; ++i) {  // the hidden prefix
    wait_full(i);
    if (!hidden(i)) break;
    release_stage(&bars.kv_empty[i % Stages]);
  }
  if (i < n_tiles) {
    int pending = i % Stages;  // stage of the tile whose dQ product is still to run
    fence_registers(s_acc);
    fence_registers(dp);
    wgmma_fence();
    issue_s_dp<D, BC, kWideS>(s_acc, dp, qr, k_base + pending * kKVBytes, v_base + pending * kKVBytes);
    probabilities<BC, 0>(s_acc, dp, qr, q0, key_tile(i), p);
    acc_to_a_frags<BC>(ds, dp);
    for (++i; i < n_tiles; ++i) {
      const int s = i % Stages;
      wait_full(i);
      if (hidden(i)) break;  // the hidden suffix
      fence_registers(s_acc);
      fence_registers(dp);
      fence_registers(dq);
      fence_registers(ds);
      wgmma_fence();
      issue_s_dp<D, BC, kWideS>(s_acc, dp, qr, k_base + s * kKVBytes, v_base + s * kKVBytes);
      wgmma_ab_rs<BC, D, kWideDQ>(dq, ds, k_base + pending * kKVBytes, BC * kRowBytes);
      probabilities<BC, 1>(s_acc, dp, qr, q0, key_tile(i), p);
      wgmma_wait<0>();
      fence_registers(dq);
      fence_registers(ds);  // the pending tile's dS stays until its product is done
      release_stage(&bars.kv_empty[pending]);
      acc_to_a_frags<BC>(ds, dp);
      pending = s;
    }
    add_ab<BC, D, kWideDQ>(dq, ds, k_base + pending * kKVBytes, BC * kRowBytes);
    release_stage(&bars.kv_empty[pending]);
    for (; i < n_tiles; ++i) {  // the hidden suffix (tile i's stage may have been waited for)
      wait_full(i);
      release_stage(&bars.kv_empty[i % Stages]);
    }
  }

  // Epilogue: this thread's rows r_lo and r_lo + 8.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = qr.r_lo + 8 * r;
    if (qi < T)
      store_acc_row<D>(p.dq + (row_base + qi) * p.stride + int64_t(h) * p.head_dim, dq, r, p.scale, p.head_dim);
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <class Kernel>
void launch_with_smem(Kernel kernel, dim3 grid, size_t smem, const CUtensorMap& a, const CUtensorMap& b,
                      const CUtensorMap& c, const CUtensorMap& d, const BackwardParams& p) {
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, kThreads, smem, coil::cuda::compute_stream()>>>(a, b, c, d, p);
}

template <int D>
void launch_hopper_backward(const AttentionProblem& pr, const void* dout, const void* q, const void* k,
                            const void* v, const BackwardParams& p) {
  const char* op = "attention_backward";
  const int64_t do_stride = pr.heads * pr.head_dim;  // dO is (B, T, H, hd)
  constexpr int Stages = kBackwardStages;
  {
    constexpr size_t smem = dkdv_smem_bytes<D, Stages>();
    static_assert(smem <= 227 * 1024, "the dK/dV kernel's shared memory exceeds the 227 KiB of a Hopper block");
    const dim3 grid(unsigned((pr.seq + kBKV - 1) / kBKV), unsigned(pr.heads), unsigned(pr.batch));
    launch_with_smem(attention_bwd_dkdv_hopper_kernel<D>, grid, smem,
                     make_tensor_map(op, pr, q, pr.qkv_stride, kBQ), make_tensor_map(op, pr, dout, do_stride, kBQ),
                     make_tensor_map(op, pr, k, pr.qkv_stride, kBKV), make_tensor_map(op, pr, v, pr.qkv_stride, kBKV),
                     p);
    COIL_CUDA_CHECK_LAUNCH("attention_bwd_dkdv_hopper", "B {} T {} H {} hd {} (tiles of {}) window {}", pr.batch,
                           pr.seq, pr.heads, pr.head_dim, D, pr.window);
  }
  {
    constexpr int BC = dq_key_tile<D>();
    constexpr size_t smem = dq_smem_bytes<D, BC, Stages>();
    static_assert(smem <= 227 * 1024, "the dQ kernel's shared memory exceeds the 227 KiB of a Hopper block");
    const dim3 grid(unsigned((pr.seq + kBR - 1) / kBR), unsigned(pr.heads), unsigned(pr.batch));
    launch_with_smem(attention_bwd_dq_hopper_kernel<D, BC>, grid, smem,
                     make_tensor_map(op, pr, q, pr.qkv_stride, kBR), make_tensor_map(op, pr, dout, do_stride, kBR),
                     make_tensor_map(op, pr, k, pr.qkv_stride, BC), make_tensor_map(op, pr, v, pr.qkv_stride, BC), p);
    COIL_CUDA_CHECK_LAUNCH("attention_bwd_dq_hopper", "B {} T {} H {} hd {} (tiles of {}) window {}", pr.batch,
                           pr.seq, pr.heads, pr.head_dim, D, pr.window);
  }
}

}  // namespace

void attention_backward_hopper(const AttentionProblem& pr, const void* dout, const void* q, const void* k,
                               const void* v, const float* lse, const float* delta, void* dq, void* dk,
                               void* dv) {
  const std::string why = attention_hopper_unsupported(pr.head_dim);
  COIL_CHECK(why.empty(), "attention_backward: the Hopper kernels cannot run: {}", why);
  COIL_CHECK(pr.dtype == DType::bf16, "attention_backward (Hopper): takes bf16, got {}", dtype_name(pr.dtype));
  BackwardParams p{};
  p.lse = lse;
  p.delta = delta;
  p.doc_start = pr.doc_start;
  p.dq = static_cast<bf16_t*>(dq);
  p.dk = static_cast<bf16_t*>(dk);
  p.dv = static_cast<bf16_t*>(dv);
  p.stride = pr.qkv_stride;
  p.T = int(pr.seq);
  p.H = int(pr.heads);
  p.window = window_of(pr);
  p.head_dim = int(pr.head_dim);
  p.scale = float(pr.scale);
  p.scale_log2 = float(pr.scale * 1.4426950408889634);
  if (pr.head_dim == 64) launch_hopper_backward<64>(pr, dout, q, k, v, p);
  else launch_hopper_backward<128>(pr, dout, q, k, v, p);  // 128, and 96 as zero-padded 128
}

}  // namespace coil::kernels::cuda
