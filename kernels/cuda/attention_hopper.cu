// Causal attention forward written for Hopper (sm_90a): warpgroup matrix instructions
// (wgmma.mma_async, bf16 -> fp32) for S = Q K^T and O += P V, Q/K/V tiles brought into shared
// memory by the tensor memory accelerator (TMA, cp.async.bulk.tensor) and a producer/consumer
// split of the block synchronized by mbarriers. Same contract as the portable forward in
// kernels/cuda/attention.cu (layout, lse, causal mask, window, documents); design in
// docs/ATTENTION.md, "Hopper forward".
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

// Block shape (kernels/cuda/attention_hopper.cuh): two consumer warpgroups of 64 query rows
// each, BR = 128 queries of one (b, h), and one producer warp (ptxas budgets the 288 threads
// as 384: 168 registers a thread, which the forward fits in without setmaxnreg). Key/value
// tiles of BC keys pass through kStages shared-memory stages.
constexpr int kBR = 2 * kRowsPerWarpgroup;
constexpr int kThreads = (kConsumerWarps + 1) * 32;

template <int D>
constexpr int key_tile() {
  return 128;
}

struct HopperParams {
  bf16_t* out;                // (B, T, H, D)
  float* lse;                 // (B, H, T)
  const int32_t* doc_start;   // (B, T) or null
  int T, H, window;
  float scale_log2;
};

// ---------------------------------------------------------------------------------------------
// Forward kernel. Grid (query blocks, H, B), query blocks longest-first; 288 threads:
//   warp 8 (producer, one thread): TMA loads of the block's Q (128 x D, once) and, for each
//     visible key tile from the diagonal backwards, K and V (BC x D each) into stage
//     i % kStages, after the consumers have released that stage (kv_empty);
//   warps 0-7 (two consumer warpgroups, 64 query rows each), per key tile:
//     S = Q K^T          wgmma m64n64k16, Q and K from shared memory (BC/64 x D/16 products)
//     mask, online softmax in fp32 with m in log2 units: P = exp2(S scale log2e - m)
//     O = O exp2(m_old - m_new) + P V   wgmma m64n64k16 with P from registers (bf16, the
//                        accumulator fragment of S re-packed as A fragments) and V from
//                        shared memory (transposed, N = head dim contiguous)
//     then release the stage.
// Epilogue: O / l stored as bf16, lse = m ln2 + ln l.
// Memory: reads Q once and K, V once per query block (from L2 after the first block of a
// head), writes O and lse; shared memory 2 (K, V) x kStages x BC x D + BR x D bf16.
template <int D, int BC>
__global__ void __launch_bounds__(kThreads, 1)
    attention_fwd_hopper_kernel(const __grid_constant__ CUtensorMap q_map,
                                const __grid_constant__ CUtensorMap k_map,
                                const __grid_constant__ CUtensorMap v_map, HopperParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr float kLn2 = 0.6931471805599453f;
  constexpr int kDBlocks = D / kBlockCols;     // 64-column blocks of a row of Q, K, V, O
  constexpr int kSBlocks = BC / kBlockCols;    // 64-key blocks of a row of S
  constexpr uint32_t kQBytes = tile_bytes<D>(kBR), kKVBytes = tile_bytes<D>(BC);

  extern __shared__ unsigned char smem_raw[];
  unsigned char* sQ = align_1024(smem_raw);                   // [kDBlocks][kBR][64]
  unsigned char* sK = sQ + kQBytes;                           // [kStages][kDBlocks][BC][64]
  unsigned char* sV = sK + kStages * kKVBytes;                // [kStages][kDBlocks][BC][64]
  const KeyTileBarriers bars = key_tile_barriers(sV + kStages * kKVBytes);  // rows_full: Q

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int T = p.T;
  const QueryBlock qblock = query_block<kBR, BC>(T, p.window, p.doc_start);
  const int h = qblock.h, b = qblock.b, q0 = qblock.q0, kt_hi = qblock.kt_hi, n_tiles = qblock.n_tiles;
  const int64_t row_base = qblock.row_base;
  __syncthreads();

  if (warp == kConsumerWarps) {  // producer
    if (lane == 0) {
      mbar_arrive_expect_tx(bars.rows_full, kQBytes);
      tma_load_tile<D>(sQ, kBR, &q_map, bars.rows_full, h, q0, b);
      produce_key_tiles<D, BC>(sK, sV, bars, &k_map, &v_map, h, b, kt_hi, n_tiles);
    }
    return;
  }

  // Consumers: warpgroup wg owns queries q0 + 64 wg .. + 63; this thread rows r_lo, r_lo + 8.
  const int wg = warp / 4;
  const int r_lo = q0 + wg * 64 + (warp % 4) * 16 + lane / 4;
  const int doc_hi = doc_first(p.doc_start, row_base, min(T, q0 + kBR) - 1);
  int first[2] = {0, 0};  // the rows' document starts (for the element mask)
  if (p.doc_start)
    for (int r = 0; r < 2; ++r) first[r] = r_lo + 8 * r < T ? doc_first(p.doc_start, row_base, r_lo + 8 * r) : 0;

  float o[kDBlocks][32], s_acc[kSBlocks][32];
  for (int blk = 0; blk < kDBlocks; ++blk)
    for (int i = 0; i < 32; ++i) o[blk][i] = 0.f;
  for (int n = 0; n < kSBlocks; ++n)
    for (int i = 0; i < 32; ++i) s_acc[n][i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const uint32_t q_addr = smem_addr(sQ) + wg * 64 * kRowBytes;
  mbar_wait(bars.rows_full, 0);

  for (int i = 0; i < n_tiles; ++i) {
    const int s = i % kStages, k0 = (kt_hi - 1 - i) * BC;
    const uint32_t parity = (i / kStages) & 1;
    const uint32_t k_addr = smem_addr(sK) + s * kKVBytes, v_addr = smem_addr(sV) + s * kKVBytes;

    // S = Q K^T over the head dim (both K-major).
    mbar_wait(&bars.k_full[s], parity);
    fence_registers(s_acc);
    wgmma_fence();
    wgmma_abt_ss<D, BC>(s_acc, q_addr, kBR * kRowBytes, k_addr, BC * kRowBytes);
    wgmma_wait<0>();
    fence_registers(s_acc);

    // Online softmax. s_acc[n][4j + c]: row r_lo + 8 (c >> 1), key k0 + 64n + 8j + 2 (lane % 4) + (c & 1).
    const bool masked = tile_needs_mask<kBR, BC>(q0, k0, T, p.window, doc_hi);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kSBlocks; ++n)
#pragma unroll
      for (int e = 0; e < 32; ++e) {
        const int r = (e >> 1) & 1;
        if (masked) {
          const int qi = r_lo + 8 * r, ki = k0 + 64 * n + 8 * (e >> 2) + 2 * (lane % 4) + (e & 1);
          if (!(visible(qi, ki, T, p.window, first[r]) && ki < T)) s_acc[n][e] = -INFINITY;
        }
        mx[r] = fmaxf(mx[r], s_acc[n][e]);
      }
    float alpha[2], m_use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m[r], quad_max(mx[r]) * p.scale_log2);
      m_use[r] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet
      alpha[r] = ex2(m[r] - m_use[r]);
      m[r] = m_new;
    }
    float row_sum[2] = {0.f, 0.f};
#pragma unroll
    for (int n = 0; n < kSBlocks; ++n)
#pragma unroll
      for (int e = 0; e < 32; ++e) {
        const int r = (e >> 1) & 1;
        s_acc[n][e] = ex2(fmaf(s_acc[n][e], p.scale_log2, -m_use[r]));
        row_sum[r] += s_acc[n][e];
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) l[r] = l[r] * alpha[r] + row_sum[r];
#pragma unroll
    for (int blk = 0; blk < kDBlocks; ++blk)
#pragma unroll
      for (int e = 0; e < 32; ++e) o[blk][e] *= alpha[(e >> 1) & 1];

    // O += P V: P from registers, V (keys x head dim) MN-major.
    mbar_wait(&bars.v_full[s], parity);
    add_pb<BC, D>(o, s_acc, v_addr, BC * kRowBytes);
    release_stage(&bars.kv_empty[s]);
  }

  // Epilogue: O / l, lse = m ln2 + ln l (rows r_lo and r_lo + 8).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = quad_sum(l[r]);
    const int qi = r_lo + 8 * r;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    if (qi < T) {
      store_acc_row<D>(p.out + ((row_base + qi) * p.H + h) * D, o, r, inv);
      if (lane % 4 == 0) p.lse[(int64_t(b) * p.H + h) * T + qi] = m[r] * kLn2 + logf(lt);
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side.

template <int D>
void launch_hopper_forward(const AttentionProblem& pr, const void* q, const void* k, const void* v,
                           void* out, float* lse) {
  constexpr int BC = key_tile<D>();
  const size_t smem = 1024 + size_t(kBR + 2 * kStages * BC) * D * sizeof(bf16_t) +
                      KeyTileBarriers::kCount * sizeof(uint64_t);
  HopperParams p{};
  p.out = static_cast<bf16_t*>(out);
  p.lse = lse;
  p.doc_start = pr.doc_start;
  p.T = int(pr.seq);
  p.H = int(pr.heads);
  p.window = window_of(pr);
  p.scale_log2 = float(pr.scale * 1.4426950408889634);
  const char* op = "attention_forward";
  const CUtensorMap q_map = make_tensor_map(op, pr, q, pr.qkv_stride, kBR),
                    k_map = make_tensor_map(op, pr, k, pr.qkv_stride, BC),
                    v_map = make_tensor_map(op, pr, v, pr.qkv_stride, BC);
  auto kernel = attention_fwd_hopper_kernel<D, BC>;
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dim3 grid(unsigned((pr.seq + kBR - 1) / kBR), unsigned(pr.heads), unsigned(pr.batch));
  kernel<<<grid, kThreads, smem, coil::cuda::compute_stream()>>>(q_map, k_map, v_map, p);
  COIL_CUDA_CHECK_LAUNCH("attention_fwd_hopper", "B {} T {} H {} hd {} window {}", pr.batch, pr.seq,
                         pr.heads, D, pr.window);
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
  if (head_dim != 64 && head_dim != 128)
    return fmt::format("head dim {} (the Hopper kernels have 64 and 128)", head_dim);
  return "";
#endif
}

void attention_forward_hopper(const AttentionProblem& pr, const void* q, const void* k, const void* v,
                              void* out, float* lse) {
  const std::string why = attention_hopper_unsupported(pr.head_dim);
  COIL_CHECK(why.empty(), "attention_forward: the Hopper kernel cannot run: {}", why);
  COIL_CHECK(pr.dtype == DType::bf16, "attention_forward (Hopper): takes bf16, got {}", dtype_name(pr.dtype));
  if (pr.head_dim == 64) launch_hopper_forward<64>(pr, q, k, v, out, lse);
  else launch_hopper_forward<128>(pr, q, k, v, out, lse);
}

}  // namespace coil::kernels::cuda
