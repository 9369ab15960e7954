// Causal attention forward written for Hopper (sm_90a): warpgroup matrix instructions
// (wgmma.mma_async, bf16 -> fp32) for S = Q K^T and O += P V, Q/K/V tiles brought into shared
// memory by the tensor memory accelerator (TMA, cp.async.bulk.tensor) and a producer/consumer
// split of the block synchronized by mbarriers. Same contract as the portable forward in
// kernels/cuda/attention.cu (layout, lse, causal mask, window, documents); head dims 64 and 128,
// and 96 through the hd-128 kernel with its tiles zero-padded to 128 columns by TMA. Design in
// docs/ATTENTION.md, "Hopper forward" and "Hopper head dim 96".
//
// Device code only for sm_90a (wgmma exists nowhere else): CMake defines COIL_CUDA_SM90A when
// CMAKE_CUDA_ARCHITECTURES names 90a, and the kernel body is guarded by
// __CUDA_ARCH_FEAT_SM90_ALL, so builds for other architectures keep an empty kernel that the
// host never launches (attention_hopper_unsupported says why).
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/cuda/attention_hopper.cuh"
#include "kernels/cuda/attention_tiles.cuh"

namespace coil::kernels::cuda {
namespace {

using namespace hopper;

// The block (docs/ATTENTION.md, "Hopper forward"): two consumer warpgroups of 64 query rows
// each, BR = 128 queries of one (b, h), and a producer warpgroup behind them that hands its
// registers to the consumers (setmaxnreg, kernels/cuda/attention_hopper.cuh): 384 threads.
// Each consumer warpgroup issues S = Q K^T of tile i before O += P V of tile i - 1 and runs
// the softmax of tile i while that product runs. Key/value tiles of BC = 128 keys in 4 stages
// at hd 64, 3 at hd 128; 128-column wgmma products (S, and P V at hd 128).
constexpr int kBR = 2 * kRowsPerWarpgroup;
constexpr int kKeyTile = 128;

template <int D>
constexpr int forward_stages() {
  return D == 64 ? 4 : 3;
}
// Dynamic shared memory of a forward block: 1 KiB alignment slack, Q (BR x D), Stages K and V
// tiles (BC x D each), the barriers.
template <int D, int BC, int Stages>
constexpr size_t forward_smem_bytes() {
  return 1024 + size_t(kBR + 2 * Stages * BC) * D * 2 + KeyTileBarriers::words(Stages) * sizeof(uint64_t);
}

struct HopperParams {
  bf16_t* out;                // (B, T, H, head_dim)
  float* lse;                 // (B, H, T)
  const int32_t* doc_start;   // (B, T) or null
  int T, H, window;
  int head_dim;               // the problem's: D, or 96 run as zero-padded D = 128
  float scale_log2;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// One consumer thread's two query rows (r_lo and r_lo + 8 of its warp's 16) and their online
// softmax state: the running max m (log2 units; -inf while nothing is visible) and the sum l
// of this thread's columns (quad_sum adds the row's four lanes at the end).
struct SoftmaxRows {
  int r_lo;
  int first[2];  // the rows' document starts (for the element mask)
  float m[2], l[2];
};

// S = Q K^T of one key tile (both K-major; q_addr this warpgroup's first query row, k_addr
// the tile's first key), waited for.
template <int D, int BC>
__device__ __forceinline__ void scores(float (&s)[BC / 64][32], uint32_t q_addr, uint32_t k_addr) {
  fence_registers(s);
  wgmma_fence();
  wgmma_abt_ss<D, BC, wide_wgmma_n(BC)>(s, q_addr, kBR * kRowBytes, k_addr, BC * kRowBytes);
  wgmma_wait<0>();
  fence_registers(s);
}

// The online softmax of the key tile k0 .. k0 + BC - 1 on this thread's fragment of S: the
// element mask where `masked` (causal, window, documents, keys past T), then S becomes
// P = exp2(S scale log2e - m_new) in place and m, l move on to the new running max; alpha[r]
// = exp2(m_old - m_new) is the factor of row r of O before this tile's P V is added.
// s[n][4j + c]: row r_lo + 8 (c >> 1), key k0 + 64n + 8j + 2 (lane % 4) + (c & 1).
template <int BC>
__device__ __forceinline__ void softmax_tile(float (&s)[BC / 64][32], SoftmaxRows& rows, int k0, bool masked,
                                             const HopperParams& p, float (&alpha)[2]) {
  const int lane = threadIdx.x % 32;
  float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int n = 0; n < BC / 64; ++n)
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const int r = (e >> 1) & 1;
      if (masked) {
        const int qi = rows.r_lo + 8 * r, ki = k0 + 64 * n + 8 * (e >> 2) + 2 * (lane % 4) + (e & 1);
        if (!(visible(qi, ki, p.T, p.window, rows.first[r]) && ki < p.T)) s[n][e] = -INFINITY;
      }
      mx[r] = fmaxf(mx[r], s[n][e]);
    }
  float m_use[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float m_new = fmaxf(rows.m[r], quad_max(mx[r]) * p.scale_log2);
    m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet
    alpha[r] = ex2(rows.m[r] - m_use[r]);
    rows.m[r] = m_new;
  }
  float row_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int n = 0; n < BC / 64; ++n)
#pragma unroll
    for (int e = 0; e < 32; ++e) {
      const int r = (e >> 1) & 1;
      s[n][e] = ex2(fmaf(s[n][e], p.scale_log2, -m_use[r]));
      row_sum[r] += s[n][e];
    }
#pragma unroll
  for (int r = 0; r < 2; ++r) rows.l[r] = rows.l[r] * alpha[r] + row_sum[r];
}

// Row r of this thread's fragment of O times alpha[r].
template <int D>
__device__ __forceinline__ void scale_rows(float (&o)[D / 64][32], const float (&alpha)[2]) {
#pragma unroll
  for (int blk = 0; blk < D / 64; ++blk)
#pragma unroll
    for (int e = 0; e < 32; ++e) o[blk][e] *= alpha[(e >> 1) & 1];
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---------------------------------------------------------------------------------------------
// Forward kernel. Grid (query blocks, H, B), query blocks longest-first; the block of
// kProducerWarpgroupThreads:
//   producer (one thread of warp 8; warps 9-11 only hand back their registers): TMA loads of
//     the block's Q (128 x D, once) and, for each visible key tile from the diagonal
//     backwards, K and V (BC x D each) into stage i % Stages, after the consumers have
//     released that stage (kv_empty); it then waits for the last releases (await_releases:
//     the producer's waits trap a broken pipeline; the consumers', under setmaxnreg, cannot);
//   warps 0-7 (two consumer warpgroups, 64 query rows each), per key tile:
//     S = Q K^T          wgmma, Q and K from shared memory (K-major)
//     mask, online softmax in fp32 with m in log2 units: P = exp2(S scale log2e - m)
//     O = O exp2(m_old - m_new) + P V   wgmma with P from registers (bf16, the accumulator
//                        fragment of S re-packed as A fragments) and V from shared memory
//                        (transposed, N = head dim contiguous)
//     then release the stage, in FlashAttention-3's intra-warpgroup overlap: S_0 and its
//     softmax first; then per tile i >= 1 issue
//     S_i = Q K_i^T and O += P_{i-1} V_{i-1} (two commit groups), wait for S_i only, run its
//     softmax while P V runs, wait for P V, release stage i - 1, rescale O by tile i's alpha
//     and pack P_i; after the loop the last tile's P V. O, S_i (fp32) and P_{i-1} (bf16 A
//     fragments) live at once: the 240 registers setmaxnreg gives the consumers pay for it.
// Epilogue: O / l stored as bf16, lse = m ln2 + ln l.
// Memory: reads Q once and K, V once per query block (from L2 after the first block of a
// head), writes O and lse; shared memory 2 (K, V) x Stages x BC x D + BR x D bf16.
template <int D, int BC>
__global__ void __launch_bounds__(kProducerWarpgroupThreads, 1)
    attention_fwd_hopper_kernel(const __grid_constant__ CUtensorMap q_map,
                                const __grid_constant__ CUtensorMap k_map,
                                const __grid_constant__ CUtensorMap v_map, HopperParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr float kLn2 = 0.6931471805599453f;
  constexpr int kDBlocks = D / kBlockCols;     // 64-column blocks of a row of Q, K, V, O
  constexpr int kSBlocks = BC / kBlockCols;    // 64-key blocks of a row of S
  constexpr int Stages = forward_stages<D>();
  constexpr int kWideS = wide_wgmma_n(BC), kWidePV = wide_wgmma_n(D);
  constexpr uint32_t kQBytes = tile_bytes<D>(kBR), kKVBytes = tile_bytes<D>(BC);

  extern __shared__ unsigned char smem_raw[];
  unsigned char* sQ = align_1024(smem_raw);                   // [kDBlocks][kBR][64]
  unsigned char* sK = sQ + kQBytes;                           // [Stages][kDBlocks][BC][64]
  unsigned char* sV = sK + Stages * kKVBytes;                 // [Stages][kDBlocks][BC][64]
  const KeyTileBarriers bars = key_tile_barriers<Stages>(sV + Stages * kKVBytes);  // rows_full: Q

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int T = p.T;
  const QueryBlock qblock = query_block<kBR, BC>(T, p.window, p.doc_start);
  const int h = qblock.h, b = qblock.b, q0 = qblock.q0, kt_hi = qblock.kt_hi, n_tiles = qblock.n_tiles;
  const int64_t row_base = qblock.row_base;
  __syncthreads();

  if (warp >= kConsumerWarps) {  // producer
    setmaxnreg_dec<kProducerRegisters>();
    if (threadIdx.x == kConsumerWarps * 32) {
      mbar_arrive_expect_tx(bars.rows_full, kQBytes);
      tma_load_tile<D>(sQ, kBR, &q_map, bars.rows_full, h, q0, b);
      produce_key_tiles<D, BC, Stages>(sK, sV, bars, &k_map, &v_map, h, b, kt_hi, n_tiles);
      await_releases<Stages>(bars.kv_empty, n_tiles);
    }
    return;
  }

  // Consumers: warpgroup wg owns queries q0 + 64 wg .. + 63; this thread rows r_lo, r_lo + 8.
  setmaxnreg_inc<kConsumerRegisters>();
  const int wg = warp / 4;
  SoftmaxRows rows;
  rows.r_lo = q0 + wg * 64 + (warp % 4) * 16 + lane / 4;
  const int doc_hi = doc_first(p.doc_start, row_base, min(T, q0 + kBR) - 1);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int qi = rows.r_lo + 8 * r;
    rows.first[r] = p.doc_start && qi < T ? doc_first(p.doc_start, row_base, qi) : 0;
    rows.m[r] = -INFINITY;
    rows.l[r] = 0.f;
  }

  float o[kDBlocks][32], s_acc[kSBlocks][32], alpha[2];
  for (int blk = 0; blk < kDBlocks; ++blk)
    for (int i = 0; i < 32; ++i) o[blk][i] = 0.f;
  for (int n = 0; n < kSBlocks; ++n)
    for (int i = 0; i < 32; ++i) s_acc[n][i] = 0.f;

  const uint32_t q_addr = smem_addr(sQ) + wg * 64 * kRowBytes, k_base = smem_addr(sK), v_base = smem_addr(sV);
  mbar_wait_untimed(bars.rows_full, 0);
  // Tile 0 (n_tiles >= 1: every query block sees its diagonal tile): S_0, its softmax (O is
  // still 0, nothing to rescale) and P_0 as A fragments.
  uint32_t pf[BC / 16][4];
  {
    const int k0 = (kt_hi - 1) * BC;
    mbar_wait_untimed(&bars.k_full[0], 0);
    scores<D, BC>(s_acc, q_addr, k_base);
    softmax_tile<BC>(s_acc, rows, k0, tile_needs_mask<kBR, BC>(q0, k0, T, p.window, doc_hi), p, alpha);
    acc_to_a_frags<BC>(pf, s_acc);
  }
  // Tile i >= 1. At the top O holds the tiles before i - 1 and P_{i-1} is packed, both
  // relative to the running max after tile i - 1.
  for (int i = 1; i < n_tiles; ++i) {
    const int s = i % Stages, prev = (i - 1) % Stages, k0 = (kt_hi - 1 - i) * BC;
    mbar_wait_untimed(&bars.k_full[s], (i / Stages) & 1);
    mbar_wait_untimed(&bars.v_full[prev], ((i - 1) / Stages) & 1);
    fence_registers(s_acc);
    fence_registers(o);
    fence_registers(pf);
    wgmma_fence();
    wgmma_abt_ss<D, BC, kWideS>(s_acc, q_addr, kBR * kRowBytes, k_base + s * kKVBytes, BC * kRowBytes);
    wgmma_ab_rs<BC, D, kWidePV>(o, pf, v_base + prev * kKVBytes, BC * kRowBytes);
    wgmma_wait<1>();  // S_i has landed; O += P_{i-1} V_{i-1} still runs
    fence_registers(s_acc);
    softmax_tile<BC>(s_acc, rows, k0, tile_needs_mask<kBR, BC>(q0, k0, T, p.window, doc_hi), p, alpha);
    wgmma_wait<0>();
    fence_registers(o);
    fence_registers(pf);  // P_{i-1} stays in its registers until the product is done
    release_stage(&bars.kv_empty[prev]);
    scale_rows<D>(o, alpha);
    acc_to_a_frags<BC>(pf, s_acc);
  }
  // The last tile's P V.
  const int last = (n_tiles - 1) % Stages;
  mbar_wait_untimed(&bars.v_full[last], ((n_tiles - 1) / Stages) & 1);
  add_ab<BC, D, kWidePV>(o, pf, v_base + last * kKVBytes, BC * kRowBytes);
  release_stage(&bars.kv_empty[last]);

  // Epilogue: O / l, lse = m ln2 + ln l (rows r_lo and r_lo + 8).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = quad_sum(rows.l[r]);
    const int qi = rows.r_lo + 8 * r;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    if (qi < T) {
      store_acc_row<D>(p.out + ((row_base + qi) * p.H + h) * p.head_dim, o, r, inv, p.head_dim);
      if (lane % 4 == 0) p.lse[(int64_t(b) * p.H + h) * T + qi] = rows.m[r] * kLn2 + logf(lt);
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <int D>
void launch_hopper_forward(const AttentionProblem& pr, const void* q, const void* k, const void* v,
                           void* out, float* lse) {
  constexpr int BC = kKeyTile;
  constexpr size_t smem = forward_smem_bytes<D, BC, forward_stages<D>()>();
  static_assert(smem <= 227 * 1024, "the forward's shared memory exceeds the 227 KiB of a Hopper block");
  HopperParams p{};
  p.out = static_cast<bf16_t*>(out);
  p.lse = lse;
  p.doc_start = pr.doc_start;
  p.T = int(pr.seq);
  p.H = int(pr.heads);
  p.window = window_of(pr);
  p.head_dim = int(pr.head_dim);
  p.scale_log2 = float(pr.scale * 1.4426950408889634);
  const char* op = "attention_forward";
  const CUtensorMap q_map = make_tensor_map(op, pr, q, pr.qkv_stride, kBR),
                    k_map = make_tensor_map(op, pr, k, pr.qkv_stride, BC),
                    v_map = make_tensor_map(op, pr, v, pr.qkv_stride, BC);
  auto kernel = attention_fwd_hopper_kernel<D, BC>;
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dim3 grid(unsigned((pr.seq + kBR - 1) / kBR), unsigned(pr.heads), unsigned(pr.batch));
  kernel<<<grid, kProducerWarpgroupThreads, smem, coil::cuda::compute_stream()>>>(q_map, k_map, v_map, p);
  COIL_CUDA_CHECK_LAUNCH("attention_fwd_hopper", "B {} T {} H {} hd {} (tiles of {}) window {}", pr.batch, pr.seq,
                         pr.heads, pr.head_dim, D, pr.window);
}

}  // namespace

std::string attention_hopper_unsupported(int64_t head_dim) {
#ifndef COIL_CUDA_SM90A
  (void)head_dim;
  return "coil was built without sm_90a code (configure with -DCMAKE_CUDA_ARCHITECTURES=90a)";
#else
  if (!cuda_available()) return "no usable GPU: " + cuda_unavailable_reason();
  const int capability = coil::cuda::compute_capability();
  if (capability != 90) return fmt::format("the device is sm_{}, not sm_90 (Hopper)", capability);
  if (head_dim != 64 && head_dim != 96 && head_dim != 128)
    return fmt::format("head dim {} (the Hopper kernels have 64, 96 and 128)", head_dim);
  return "";
#endif
}

void attention_forward_hopper(const AttentionProblem& pr, const void* q, const void* k, const void* v,
                              void* out, float* lse) {
  const std::string why = attention_hopper_unsupported(pr.head_dim);
  COIL_CHECK(why.empty(), "attention_forward: the Hopper kernel cannot run: {}", why);
  COIL_CHECK(pr.dtype == DType::bf16, "attention_forward (Hopper): takes bf16, got {}", dtype_name(pr.dtype));
  if (pr.head_dim == 64)
    launch_hopper_forward<64>(pr, q, k, v, out, lse);
  else  // 128, and 96 run as zero-padded 128 (docs/ATTENTION.md, "Hopper head dim 96")
    launch_hopper_forward<128>(pr, q, k, v, out, lse);
}

}  // namespace coil::kernels::cuda
