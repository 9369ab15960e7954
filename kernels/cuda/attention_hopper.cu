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
// host never launches (attention_hopper_forward_unsupported says why).
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "core/cuda.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/device_util.cuh"

namespace coil::kernels::cuda {
namespace {

// Block shape: two consumer warpgroups of 64 query rows each (BR = 128 queries of one (b, h))
// and one producer warp behind them (warps 0-7 compute, warp 8 loads; a warpgroup must start
// at a warp index divisible by 4, so the producer goes last). Key/value tiles of BC keys pass
// through kStages shared-memory stages.
constexpr int kBR = 128;
constexpr int kConsumerWarps = 8;
constexpr int kThreads = (kConsumerWarps + 1) * 32;
constexpr int kStages = 2;
// Shared tiles are stored as 64-column blocks of 128-byte rows (one 128-byte swizzle atom
// wide): a tile of R rows and hd columns is hd/64 blocks of R x 64 bf16.
constexpr int kBlockCols = 64;

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

// Device helpers of the kernel below, compiled only where it is (sm_90a device code).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ int doc_first(const HopperParams& p, int64_t row_base, int q) {
  return p.doc_start ? p.doc_start[row_base + q] : 0;
}

// ---- mbarrier (shared-memory barrier with a transaction count) ---------------------------
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(arrivals));
}
// Makes the initialized barriers visible to the async proxy (TMA) and the other threads
// (with the __syncthreads that follows).
__device__ __forceinline__ void mbar_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival that also announces `bytes` more to come from TMA copies.
__device__ __forceinline__ void mbar_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// Whether the barrier's phase of parity `parity` has completed (a fresh barrier is in phase
// 0: parity 0 completes with its first phase); waits a short, hardware-defined time first.
__device__ __forceinline__ bool mbar_try_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  asm volatile(
      "{\n.reg .pred p;\n"
      "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
      "selp.u32 %0, 1, 0, p;\n}\n"
      : "=r"(done)
      : "r"(smem_addr(bar)), "r"(parity)
      : "memory");
  return done != 0;
}
// Waits for that phase. A wait of 2^35 clocks (over 15 s) can only be a broken pipeline (a
// copy whose bytes never arrive, a release never made): the kernel traps, so the launch fails
// with an error instead of hanging the process.
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  if (mbar_try_wait(bar, parity)) return;
  const long long start = clock64();
  while (!mbar_try_wait(bar, parity))
    if (clock64() - start > (1ll << 35)) __trap();
}

// ---- TMA ---------------------------------------------------------------------------------
// Copies the box at coordinates (column c0, head c1, token c2, batch c3) of the tensor map
// into shared memory at dst (1024-byte aligned, 128-byte swizzled as the map says); the
// bytes are counted on `bar`. Out-of-range rows (tokens >= T) arrive as zeros.
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, uint64_t* bar, int c0,
                                         int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(smem_addr(bar))
      : "memory");
}

// ---- wgmma -------------------------------------------------------------------------------
// Shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") of an operand stored
// as 128-byte rows with the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8),
// the layout TMA writes with CU_TENSOR_MAP_SWIZZLE_128B):
//   bits 0-13   start address >> 4
//   bits 16-29  leading-dimension byte offset >> 4: unused by both uses here (K-major with
//               swizzle: "not used, assumed 1"; MN-major: the stride between 64-element
//               atoms along N, and every N here is one atom), so 1
//   bits 32-45  stride-dimension byte offset >> 4: from one group of 8 rows to the next,
//               8 x 128 = 1024 bytes (K-major: 8 rows of M/N; MN-major: 8 rows of K)
//   bits 49-51  base offset 0: every tile starts on a 1024-byte boundary, where the swizzle
//               pattern repeats
//   bits 62-63  1: 128-byte swizzle
// Advancing the start address by 32 bytes selects the next 16 columns (k) of a K-major
// operand inside the swizzle atom (the hardware applies the XOR to the full address).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t smem_byte_addr) {
  return uint64_t((smem_byte_addr & 0x3FFFF) >> 4) | (uint64_t(1) << 16) |
         (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait_all() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }

// Keeps the compiler from moving reads or writes of accumulator or A-fragment registers
// across wgmma_fence and the asynchronous wgmma region (the tensor cores own them until
// wgmma_wait_all).
template <int N>
__device__ __forceinline__ void fence_registers(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int N>
__device__ __forceinline__ void fence_registers(uint32_t (&a)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+r"(a[i])::"memory");
}

// Accumulator fragment of one m64n64 product, per thread (PTX ISA, "Matrix fragments for
// wgmma .m64nNk16"): warp w of the warpgroup owns rows 16w..16w+15; d[4j + c] is row
// 16w + lane/4 + 8*(c >> 1), column 8j + 2*(lane % 4) + (c & 1), j = 0..7 — per 8-column
// slice the C fragment of mma.sync m16n8.
using Acc64 = float[32];
// The 32 accumulator registers of an m64n64 product as asm operands %0..%31, and their bindings.
#define COIL_WGMMA_ACC32_OPERANDS                                                                \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
#define COIL_WGMMA_ACC32_BINDINGS(d)                                                               \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),  \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),     \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),   \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),   \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

// d (64 x 64, f32) = (accumulate ? d : 0) + A B, A 64 x 16 (K-major, descriptor a), B 16 x 64
// given as a 64 x 16 K-major tile (descriptor b): both operands bf16 in shared memory.
__device__ __forceinline__ void wgmma_m64n64k16_ss(Acc64& d, uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      COIL_WGMMA_ACC32_OPERANDS
      "%32, %33, p, 1, 1, 0, 0;\n}\n"
      : COIL_WGMMA_ACC32_BINDINGS(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d (64 x 64, f32) = (accumulate ? d : 0) + A B, A 64 x 16 bf16 in registers (a[4]: per
// warp the A fragment of mma.sync m16n8k16 for rows 16w..16w+15), B 16 x 64 bf16 in shared
// memory with N contiguous (MN-major, imm-trans-b = 1; descriptor b).
__device__ __forceinline__ void wgmma_m64n64k16_rs(Acc64& d, const uint32_t (&a)[4], uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      COIL_WGMMA_ACC32_OPERANDS
      "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : COIL_WGMMA_ACC32_BINDINGS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

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
  constexpr int kRowBytes = kBlockCols * 2;  // one row of a column block
  constexpr int kDBlocks = D / kBlockCols;     // 64-column blocks of a row of Q, K, V, O
  constexpr int kSBlocks = BC / kBlockCols;    // 64-key blocks of a row of S
  constexpr int kQBlockBytes = kBR * kRowBytes, kKVBlockBytes = BC * kRowBytes;
  constexpr uint32_t kQBytes = kQBlockBytes * kDBlocks, kKVBytes = kKVBlockBytes * kDBlocks;

  extern __shared__ unsigned char smem_raw[];
  // Tiles on 1024-byte boundaries (the 128-byte swizzle repeats every 8 rows of 128 bytes).
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  unsigned char* sQ = smem;                                   // [kDBlocks][kBR][64]
  unsigned char* sK = sQ + kQBytes;                           // [kStages][kDBlocks][BC][64]
  unsigned char* sV = sK + kStages * kKVBytes;                // [kStages][kDBlocks][BC][64]
  uint64_t* q_full = reinterpret_cast<uint64_t*>(sV + kStages * kKVBytes);
  uint64_t* k_full = q_full + 1;          // [kStages]: K of the stage has landed
  uint64_t* v_full = k_full + kStages;    // [kStages]: V of the stage has landed
  uint64_t* kv_empty = v_full + kStages;  // [kStages]: every consumer warp is done with it

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int qb = gridDim.x - 1 - blockIdx.x;  // longest rows first
  const int h = blockIdx.y, b = blockIdx.z;
  const int T = p.T, q0 = qb * kBR;
  const int64_t row_base = int64_t(b) * T;
  int kt_lo, kt_hi;
  key_tile_range<kBR, BC>(q0, T, p.window, doc_first(p, row_base, q0), kt_lo, kt_hi);
  const int n_tiles = kt_hi - kt_lo;

  if (threadIdx.x == 0) {
    mbar_init(q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbar_init(&k_full[s], 1);
      mbar_init(&v_full[s], 1);
      mbar_init(&kv_empty[s], kConsumerWarps);
    }
    mbar_init_fence();
  }
  __syncthreads();

  if (warp == kConsumerWarps) {  // producer
    if (lane == 0) {
      mbar_arrive_expect_tx(q_full, kQBytes);
      for (int blk = 0; blk < kDBlocks; ++blk)
        tma_load(sQ + blk * kQBlockBytes, &q_map, q_full, blk * kBlockCols, h, q0, b);
      for (int i = 0; i < n_tiles; ++i) {
        const int s = i % kStages, k0 = (kt_hi - 1 - i) * BC;
        if (i >= kStages) mbar_wait(&kv_empty[s], (i / kStages - 1) & 1);
        mbar_arrive_expect_tx(&k_full[s], kKVBytes);
        for (int blk = 0; blk < kDBlocks; ++blk)
          tma_load(sK + (s * kDBlocks + blk) * kKVBlockBytes, &k_map, &k_full[s], blk * kBlockCols, h, k0, b);
        mbar_arrive_expect_tx(&v_full[s], kKVBytes);
        for (int blk = 0; blk < kDBlocks; ++blk)
          tma_load(sV + (s * kDBlocks + blk) * kKVBlockBytes, &v_map, &v_full[s], blk * kBlockCols, h, k0, b);
      }
    }
    return;
  }

  // Consumers: warpgroup wg owns queries q0 + 64 wg .. + 63; this thread rows r_lo, r_lo + 8.
  const int wg = warp / 4;
  const int r_lo = q0 + wg * 64 + (warp % 4) * 16 + lane / 4;
  const int doc_hi = doc_first(p, row_base, min(T, q0 + kBR) - 1);
  int first[2] = {0, 0};  // the rows' document starts (for the element mask)
  if (p.doc_start)
    for (int r = 0; r < 2; ++r) first[r] = r_lo + 8 * r < T ? doc_first(p, row_base, r_lo + 8 * r) : 0;

  float o[kDBlocks][32], s_acc[kSBlocks][32];
  for (int blk = 0; blk < kDBlocks; ++blk)
    for (int i = 0; i < 32; ++i) o[blk][i] = 0.f;
  for (int n = 0; n < kSBlocks; ++n)
    for (int i = 0; i < 32; ++i) s_acc[n][i] = 0.f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

  const uint32_t q_addr = smem_addr(sQ) + wg * 64 * kRowBytes;
  mbar_wait(q_full, 0);

  for (int i = 0; i < n_tiles; ++i) {
    const int s = i % kStages, k0 = (kt_hi - 1 - i) * BC;
    const uint32_t parity = (i / kStages) & 1;
    const uint32_t k_addr = smem_addr(sK) + s * kKVBytes, v_addr = smem_addr(sV) + s * kKVBytes;

    // S = Q K^T: k-step kk covers head columns 16kk..16kk+15, i.e. bytes 32 (kk % 4) of the
    // rows of column block kk / 4.
    mbar_wait(&k_full[s], parity);
#pragma unroll
    for (int n = 0; n < kSBlocks; ++n) fence_registers(s_acc[n]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t col = (kk / 4), byte = (kk % 4) * 32;
      const uint64_t a = sw128_desc(q_addr + col * kQBlockBytes + byte);
#pragma unroll
      for (int n = 0; n < kSBlocks; ++n)
        wgmma_m64n64k16_ss(s_acc[n], a, sw128_desc(k_addr + col * kKVBlockBytes + n * 64 * kRowBytes + byte),
                           kk > 0);
    }
    wgmma_commit();
    wgmma_wait_all();
#pragma unroll
    for (int n = 0; n < kSBlocks; ++n) fence_registers(s_acc[n]);

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

    // P as A fragments: k-step kk (keys 16kk..16kk+15) is the 8-key slices j = 2 (kk % 4) and
    // j + 1 of S block kk / 4: registers {row lo, keys 2t, 2t+1}, {row hi, same},
    // {row lo, keys 8 + 2t, 9 + 2t}, {row hi, same}.
    uint32_t pa[BC / 16][4];
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) {
      const float* sj = &s_acc[kk / 4][8 * (kk % 4)];
      pa[kk][0] = pack_bf16x2(sj[0], sj[1]);
      pa[kk][1] = pack_bf16x2(sj[2], sj[3]);
      pa[kk][2] = pack_bf16x2(sj[4], sj[5]);
      pa[kk][3] = pack_bf16x2(sj[6], sj[7]);
    }

    // O += P V: k-step kk covers keys 16kk..16kk+15 = 16 rows (2048 bytes) of each V column
    // block; one m64n64 product per column block.
    mbar_wait(&v_full[s], parity);
#pragma unroll
    for (int blk = 0; blk < kDBlocks; ++blk) fence_registers(o[blk]);
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk) fence_registers(pa[kk]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BC / 16; ++kk)
#pragma unroll
      for (int blk = 0; blk < kDBlocks; ++blk)
        wgmma_m64n64k16_rs(o[blk], pa[kk], sw128_desc(v_addr + blk * kKVBlockBytes + kk * 16 * kRowBytes), 1);
    wgmma_commit();
    wgmma_wait_all();
#pragma unroll
    for (int blk = 0; blk < kDBlocks; ++blk) fence_registers(o[blk]);
    __syncwarp();
    if (lane == 0) mbar_arrive(&kv_empty[s]);
  }

  // Epilogue: O / l, lse = m ln2 + ln l. o[blk][4j + c]: row r_lo + 8 (c >> 1), column
  // 64 blk + 8j + 2 (lane % 4) + (c & 1).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float lt = quad_sum(l[r]);
    const int qi = r_lo + 8 * r;
    const float inv = lt > 0.f ? 1.f / lt : 0.f;
    if (qi < T) {
      bf16_t* go = p.out + ((row_base + qi) * p.H + h) * D;
#pragma unroll
      for (int blk = 0; blk < kDBlocks; ++blk)
#pragma unroll
        for (int j = 0; j < 8; ++j)
          *reinterpret_cast<uint32_t*>(go + blk * kBlockCols + 8 * j + 2 * (lane % 4)) =
              pack_bf16x2(o[blk][4 * j + 2 * r] * inv, o[blk][4 * j + 2 * r + 1] * inv);
      if (lane % 4 == 0) p.lse[(int64_t(b) * p.H + h) * T + qi] = m[r] * kLn2 + logf(lt);
    }
  }
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side.

// cuTensorMapEncodeTiled from the driver through the runtime (no -lcuda link), looked up once.
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    COIL_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                     cudaEnableDefault, &found));
    COIL_CHECK(found == cudaDriverEntryPointSuccess && fn,
               "attention_forward (Hopper): the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// Tensor map of one of q, k, v: a 4-d bf16 tensor (hd, H, T, B) (innermost first; strides
// 2 hd, 2 x token stride, 2 T x token stride bytes: increasing in both the separate and the
// packed layout), read in boxes of 64 columns x 1 head x `rows` tokens, which land in shared
// memory as `rows` rows of 128 bytes with the 128-byte swizzle; tokens past T read as zeros.
CUtensorMap make_tensor_map(const AttentionProblem& pr, const void* base, int rows) {
  const cuuint64_t dims[4] = {cuuint64_t(pr.head_dim), cuuint64_t(pr.heads), cuuint64_t(pr.seq),
                              cuuint64_t(pr.batch)};
  const cuuint64_t strides[3] = {cuuint64_t(pr.head_dim) * 2, cuuint64_t(pr.qkv_stride) * 2,
                                 cuuint64_t(pr.seq) * cuuint64_t(pr.qkv_stride) * 2};
  const cuuint32_t box[4] = {cuuint32_t(kBlockCols), 1, cuuint32_t(rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void*>(base), dims,
                                    strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  COIL_CHECK(r == CUDA_SUCCESS,
             "attention_forward (Hopper): cuTensorMapEncodeTiled failed (error {}) for B {} T {} H {} "
             "hd {} token stride {}",
             int(r), pr.batch, pr.seq, pr.heads, pr.head_dim, pr.qkv_stride);
  return map;
}

template <int D>
void launch_hopper_forward(const AttentionProblem& pr, const void* q, const void* k, const void* v,
                           void* out, float* lse) {
  constexpr int BC = key_tile<D>();
  const size_t smem = 1024 + size_t(kBR + 2 * kStages * BC) * D * sizeof(bf16_t) +
                      (1 + 3 * kStages) * sizeof(uint64_t);
  HopperParams p{};
  p.out = static_cast<bf16_t*>(out);
  p.lse = lse;
  p.doc_start = pr.doc_start;
  p.T = int(pr.seq);
  p.H = int(pr.heads);
  p.window = int(std::min<int64_t>(pr.window, int64_t(1) << 30));
  p.scale_log2 = float(pr.scale * 1.4426950408889634);
  const CUtensorMap q_map = make_tensor_map(pr, q, kBR), k_map = make_tensor_map(pr, k, BC),
                    v_map = make_tensor_map(pr, v, BC);
  auto kernel = attention_fwd_hopper_kernel<D, BC>;
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dim3 grid(unsigned((pr.seq + kBR - 1) / kBR), unsigned(pr.heads), unsigned(pr.batch));
  kernel<<<grid, kThreads, smem, coil::cuda::compute_stream()>>>(q_map, k_map, v_map, p);
  COIL_CUDA_CHECK_LAUNCH("attention_fwd_hopper", "B {} T {} H {} hd {} window {}", pr.batch, pr.seq,
                         pr.heads, D, pr.window);
}

}  // namespace

std::string attention_hopper_forward_unsupported(int64_t head_dim) {
#ifndef COIL_CUDA_SM90A
  (void)head_dim;
  return "coil was built without sm_90a code (configure with -DCMAKE_CUDA_ARCHITECTURES=90a)";
#else
  if (!cuda_available()) return "no usable GPU: " + cuda_unavailable_reason();
  const int capability = coil::cuda::compute_capability();
  if (capability != 90) return fmt::format("the device is sm_{}, not sm_90 (Hopper)", capability);
  if (head_dim != 64 && head_dim != 128)
    return fmt::format("head dim {} (the Hopper kernel has 64 and 128)", head_dim);
  return "";
#endif
}

void attention_forward_hopper(const AttentionProblem& pr, const void* q, const void* k, const void* v,
                              void* out, float* lse) {
  const std::string why = attention_hopper_forward_unsupported(pr.head_dim);
  COIL_CHECK(why.empty(), "attention_forward: the Hopper kernel cannot run: {}", why);
  COIL_CHECK(pr.dtype == DType::bf16, "attention_forward (Hopper): takes bf16, got {}", dtype_name(pr.dtype));
  if (pr.head_dim == 64) launch_hopper_forward<64>(pr, q, k, v, out, lse);
  else launch_hopper_forward<128>(pr, q, k, v, out, lse);
}

}  // namespace coil::kernels::cuda
