// What the Hopper (sm_90a) attention kernels share: the forward (kernels/cuda/attention_hopper.cu)
// and the backward (kernels/cuda/attention_hopper_backward.cu). The block shape (two consumer
// warpgroups and a producer), the PTX wrappers of the Hopper instructions (setmaxnreg,
// mbarriers, TMA tile copies, wgmma with its descriptors and fences), the products as the
// kernels issue them, the query-block bookkeeping and producer loop of the kernels that stream
// key tiles (forward, dQ), the accumulator stores, and on the host the TMA tensor maps over
// the attention layouts. Design in docs/ATTENTION.md ("Hopper forward", "Hopper backward").
//
// The device helpers exist only in sm_90a device code (__CUDA_ARCH_FEAT_SM90_ALL: wgmma exists
// nowhere else); the kernels that use them keep an empty body elsewhere, which the host never
// launches (attention_hopper_unsupported says why).
#pragma once
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda.h"
#include "kernels/attention.h"
#include "kernels/cuda/attention_tiles.cuh"
#include "kernels/cuda/device_util.cuh"

namespace coil::kernels::cuda::hopper {

// Block shape of every Hopper attention kernel: warps 0-3 and 4-7 are two consumer warpgroups
// of 64 rows each (queries in the forward and dQ, keys in dK/dV), the producer behind them (a
// warpgroup must start at a warp index divisible by 4, so the producer goes last), a
// warpgroup of which one warp works (see setmaxnreg below). Streamed tiles pass through
// shared-memory stages, as many as each kernel's shared memory allows (3 or 4).
constexpr int kConsumerWarps = 8;
constexpr int kRowsPerWarpgroup = 64;
// Columns of one wgmma of a product of `columns` columns: m64n128k16 where 128 divides them
// (fewer, larger products), else m64n64k16.
constexpr int wide_wgmma_n(int columns) { return columns % 128 == 0 ? 128 : 64; }
// Blocks with a producer warpgroup: 384 threads. The consumers' accumulators need more than
// the 168 registers a thread that ptxas gives a 384-thread block, so the producer warpgroup
// hands its registers to them: setmaxnreg to kProducerRegisters there and kConsumerRegisters
// in the consumers, 128 x 24 + 256 x 240 = 384 x 168 registers in all.
constexpr int kProducerWarpgroupThreads = (kConsumerWarps + 4) * 32;
constexpr int kProducerRegisters = 24, kConsumerRegisters = 240;
static_assert(128 * kProducerRegisters + 256 * kConsumerRegisters <= kProducerWarpgroupThreads * 168,
              "the setmaxnreg budgets must fit in the registers of the block");
// Shared tiles are stored as 64-column blocks of 128-byte rows (one 128-byte swizzle atom
// wide): a tile of R rows and hd columns is hd/64 blocks of R x 64 bf16, each on a 1024-byte
// boundary.
constexpr int kBlockCols = 64;
constexpr int kRowBytes = kBlockCols * 2;
// Bytes of a tile of `rows` rows x D columns in that layout.
template <int D>
constexpr uint32_t tile_bytes(int rows) {
  return uint32_t(rows) * kRowBytes * (D / kBlockCols);
}

// The mbarriers of a kernel that keeps one block of query rows in shared memory and streams
// key tiles through it (the forward, dQ): rows_full (the block's own tiles have landed) and,
// per stage, k_full and v_full (TMA) and kv_empty (every consumer warp released the stage).
struct KeyTileBarriers {
  // uint64_t words of the barriers of `stages` stages
  static constexpr int words(int stages) { return 1 + 3 * stages; }
  uint64_t* rows_full;
  uint64_t* k_full;
  uint64_t* v_full;
  uint64_t* kv_empty;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The dynamic shared memory moved up to the next 1024-byte boundary (where the 128-byte swizzle
// pattern repeats); launches ask for 1 KiB more than they use.
__device__ __forceinline__ unsigned char* align_1024(unsigned char* smem) {
  return smem + ((1024 - (smem_addr(smem) & 1023)) & 1023);
}

// ---- register budget ---------------------------------------------------------------------
// ptxas sizes the registers of a block of more than 256 threads for a multiple of 4 warps (288
// threads get the 168 registers a thread of 384 does: 65536 / 384, rounded down to 8). A
// warpgroup moves its threads' budget to N with setmaxnreg (sm_90a; every warp of the
// warpgroup executes it, N a multiple of 8 in 24..256): dec returns registers to the block's
// pool, inc waits until the pool has them. ptxas allocates the code after it within N.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
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
// One arrival (release semantics: this thread's earlier shared-memory writes are visible to
// the threads whose wait on this phase succeeds).
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
// The same wait without the time limit, for consumer warpgroups that raised their registers
// with setmaxnreg: a trap in their code makes ptxas allocate them within the block's entry
// budget again (nvcc 13.0: the spills come back). Their producer watches for them instead
// (await_releases).
__device__ __forceinline__ void mbar_wait_untimed(uint64_t* bar, uint32_t parity) {
  while (!mbar_try_wait(bar, parity)) {
  }
}

// ---- TMA ---------------------------------------------------------------------------------
// Copies the box at coordinates (column c0, head c1, token c2, batch c3) of the tensor map
// into shared memory at dst (1024-byte aligned, 128-byte swizzled as the map says); the
// bytes are counted on `bar` (the whole box, also where it lies out of bounds). Out-of-range
// elements (tokens >= T, columns >= hd) arrive as zeros.
__device__ __forceinline__ void tma_load(void* dst, const CUtensorMap* map, uint64_t* bar, int c0,
                                         int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(smem_addr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3),
      "r"(smem_addr(bar))
      : "memory");
}
// The tile of `rows` tokens from token t0 of head h, batch row b, all D columns (the map's box
// is 64 columns x `rows` tokens) into dst as D/64 column blocks; tile_bytes<D>(rows) bytes
// counted on `bar`.
template <int D>
__device__ __forceinline__ void tma_load_tile(unsigned char* dst, int rows, const CUtensorMap* map,
                                              uint64_t* bar, int h, int t0, int b) {
#pragma unroll
  for (int blk = 0; blk < D / kBlockCols; ++blk)
    tma_load(dst + blk * rows * kRowBytes, map, bar, blk * kBlockCols, h, t0, b);
}

// ---- wgmma -------------------------------------------------------------------------------
// Shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") of an operand stored
// as 128-byte rows with the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8),
// the layout TMA writes with CU_TENSOR_MAP_SWIZZLE_128B):
//   bits 0-13   start address >> 4
//   bits 16-29  leading-dimension byte offset >> 4: K-major with swizzle: unused ("assumed
//               1"); MN-major: the stride between 64-element atoms along N (atom_stride:
//               the next 64-column block of a B operand whose N is 128; unused, so 16
//               bytes, where N is one atom)
//   bits 32-45  stride-dimension byte offset >> 4: from one group of 8 rows to the next,
//               8 x 128 = 1024 bytes (K-major: 8 rows of M/N; MN-major: 8 rows of K)
//   bits 49-51  base offset 0: every tile starts on a 1024-byte boundary, where the swizzle
//               pattern repeats
//   bits 62-63  1: 128-byte swizzle
// Advancing the start address by 32 bytes selects the next 16 columns (k) of a K-major
// operand inside the swizzle atom (the hardware applies the XOR to the full address).
// Two uses, both with the head dim along the 128-byte rows:
//   K-major (no transpose): an M x 16 or N x 16 piece whose k runs along the head dim (Q, K,
//     V, dO in the products over the head dim); k-step kk of column block kk / 4 starts
//     32 (kk % 4) bytes into its rows, and rows 64 n on start 64 n x 128 bytes further;
//   MN-major (imm-trans-b = 1): a 16 x 64 B piece whose k runs along the tokens and whose N is
//     64 head columns (V in O += P V, dO and Q in dV += P^T dO and dK += dS^T Q, K in
//     dQ += dS K); k-step kk starts 16 kk rows = 2048 kk bytes into the column block. A
//     16 x 128 piece (the forward's V at hd 128) spans two column blocks,
//     atom_stride bytes apart.
__device__ __forceinline__ uint64_t sw128_desc(uint32_t smem_byte_addr, uint32_t atom_stride = 16) {
  return uint64_t((smem_byte_addr & 0x3FFFF) >> 4) | (uint64_t((atom_stride >> 4) & 0x3FFF) << 16) |
         (uint64_t(1024 >> 4) << 32) | (uint64_t(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most N of this warpgroup's committed wgmma groups are pending (the older ones
// have completed: their accumulators may be read, their A registers reused).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Keeps the compiler from moving reads or writes of accumulator or A-fragment registers
// across wgmma_fence and the asynchronous wgmma region (the tensor cores own them until
// wgmma_wait).
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
template <int M, int N>
__device__ __forceinline__ void fence_registers(float (&d)[M][N]) {
#pragma unroll
  for (int m = 0; m < M; ++m) fence_registers(d[m]);
}
template <int M, int N>
__device__ __forceinline__ void fence_registers(uint32_t (&a)[M][N]) {
#pragma unroll
  for (int m = 0; m < M; ++m) fence_registers(a[m]);
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

// The 64 accumulator registers of an m64n128 product as asm operands %0..%63, and their
// bindings to d[0] (columns 0-63) and d[1] (64-127): register 4j + c of the n128 fragment is
// column 8j + 2 (lane % 4) + (c & 1), j = 0..15, so its registers 0-31 and 32-63 are the
// m64n64 fragments (Acc64) of its two 64-column halves.
#define COIL_WGMMA_ACC64_OPERANDS \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, " \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, " \
  "%56, %57, %58, %59, %60, %61, %62, %63}, "
#define COIL_WGMMA_ACC64_BINDINGS(d) COIL_WGMMA_ACC32_BINDINGS(d[0]), COIL_WGMMA_ACC32_BINDINGS(d[1])

// d (64 x 128, f32) = (accumulate ? d : 0) + A B: wgmma_m64n64k16_ss with N = 128 (B a 128 x 16
// K-major tile).
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[2][32], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      COIL_WGMMA_ACC64_OPERANDS
      "%64, %65, p, 1, 1, 0, 0;\n}\n"
      : COIL_WGMMA_ACC64_BINDINGS(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d (64 x 128, f32) = (accumulate ? d : 0) + A B: wgmma_m64n64k16_rs with N = 128 (B 16 x 128,
// MN-major: two 64-column atoms, the descriptor's atom stride apart).
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[2][32], const uint32_t (&a)[4], uint64_t b,
                                                    int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      COIL_WGMMA_ACC64_OPERANDS
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : COIL_WGMMA_ACC64_BINDINGS(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}

// One product of instruction width W = 64 or 128 columns into the W/64 fragments at d.
__device__ __forceinline__ void wgmma_ss(float (&d)[1][32], uint64_t a, uint64_t b, int accumulate) {
  wgmma_m64n64k16_ss(d[0], a, b, accumulate);
}
__device__ __forceinline__ void wgmma_ss(float (&d)[2][32], uint64_t a, uint64_t b, int accumulate) {
  wgmma_m64n128k16_ss(d, a, b, accumulate);
}
__device__ __forceinline__ void wgmma_rs(float (&d)[1][32], const uint32_t (&a)[4], uint64_t b, int accumulate) {
  wgmma_m64n64k16_rs(d[0], a, b, accumulate);
}
__device__ __forceinline__ void wgmma_rs(float (&d)[2][32], const uint32_t (&a)[4], uint64_t b, int accumulate) {
  wgmma_m64n128k16_rs(d, a, b, accumulate);
}
// The W/64 fragments of acc from fragment `first` on, as the accumulator of one W-wide product.
template <int W, int N>
__device__ __forceinline__ float (&fragments(float (&acc)[N][32], int first))[W / 64][32] {
  return *reinterpret_cast<float(*)[W / 64][32]>(&acc[first]);
}

// acc[n] (n = 0..N/64-1, the 64 x N accumulator of one warpgroup as N/64 m64n64 fragments)
// as the A operand of a product over those N columns, rounded to bf16: k-step kk (columns
// 16kk..16kk+15) is the 8-column slices j = 2 (kk % 4) and j + 1 of fragment kk / 4, i.e. the
// registers {row lo, columns 2t, 2t+1}, {row hi, same}, {row lo, columns 8 + 2t, 9 + 2t},
// {row hi, same} (t = lane % 4): the A layout of mma.sync m16n8k16 per warp, which is the
// wgmma A-register layout. This is how a product's result becomes the next product's left
// operand (P and dS) without a trip through shared memory.
template <int N>
__device__ __forceinline__ void acc_to_a_frags(uint32_t (&a)[N / 16][4], const float (&acc)[N / 64][32]) {
#pragma unroll
  for (int kk = 0; kk < N / 16; ++kk) {
    const float* sj = &acc[kk / 4][8 * (kk % 4)];
    a[kk][0] = pack_bf16x2(sj[0], sj[1]);
    a[kk][1] = pack_bf16x2(sj[2], sj[3]);
    a[kk][2] = pack_bf16x2(sj[4], sj[5]);
    a[kk][3] = pack_bf16x2(sj[6], sj[7]);
  }
}

// acc[n] (64 x 64 n-th block of this warpgroup's 64 x N result) = A B^T over the D head
// columns, both operands K-major in shared memory: a_addr the first of A's 64 rows (one
// column block of A is a_block_bytes long), b_addr the first of B's N rows (b_block_bytes a
// column block), as N/W products of W columns (64 or 128: a wider one reads A once for
// twice the columns). Issued and committed as one wgmma group; the caller waits.
template <int D, int N, int W = 64>
__device__ __forceinline__ void wgmma_abt_ss(float (&acc)[N / 64][32], uint32_t a_addr, uint32_t a_block_bytes,
                                             uint32_t b_addr, uint32_t b_block_bytes) {
  static_assert((W == 64 || W == 128) && N % W == 0, "wgmma_abt_ss: W must be 64 or 128 and divide N");
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t col = kk / 4, byte = (kk % 4) * 32;
    const uint64_t a = sw128_desc(a_addr + col * a_block_bytes + byte);
#pragma unroll
    for (int n = 0; n < N / W; ++n)
      wgmma_ss(fragments<W>(acc, n * (W / 64)), a,
               sw128_desc(b_addr + col * b_block_bytes + n * W * kRowBytes + byte), kk > 0);
  }
  wgmma_commit();
}

// acc[blk] (64 x D, 64-column blocks) += A B: A (64 x K) in registers (acc_to_a_frags), B a
// K x D tile in shared memory, token rows with the head dim contiguous (MN-major), b_addr its
// first row, b_block_bytes one column block, as D/W products of W columns (64 or 128: W = 128
// spans two column blocks). Issued and committed as one wgmma group.
template <int K, int D, int W = 64>
__device__ __forceinline__ void wgmma_ab_rs(float (&acc)[D / 64][32], const uint32_t (&a)[K / 16][4],
                                            uint32_t b_addr, uint32_t b_block_bytes) {
  static_assert((W == 64 || W == 128) && D % W == 0, "wgmma_ab_rs: W must be 64 or 128 and divide D");
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk)
#pragma unroll
    for (int n = 0; n < D / W; ++n)
      wgmma_rs(fragments<W>(acc, n * (W / 64)), a[kk],
               sw128_desc(b_addr + n * (W / 64) * b_block_bytes + kk * 16 * kRowBytes, W == 128 ? b_block_bytes : 16),
               1);
  wgmma_commit();
}

// acc (64 x D, 64-column blocks) += A B, A a 64 x K operand in registers (acc_to_a_frags), B
// a K x D tile in shared memory read MN-major (wgmma_ab_rs, W-column products), and waits for
// it (nothing runs between the issue and the wait, so the A registers stay untouched while
// the tensor cores read them).
template <int K, int D, int W = 64>
__device__ __forceinline__ void add_ab(float (&acc)[D / 64][32], uint32_t (&a)[K / 16][4], uint32_t b_addr,
                                       uint32_t b_block_bytes) {
  fence_registers(acc);
  fence_registers(a);
  wgmma_fence();
  wgmma_ab_rs<K, D, W>(acc, a, b_addr, b_block_bytes);
  wgmma_wait<0>();
  fence_registers(acc);
}

// acc (64 x D, 64-column blocks) += bf16(p) B, p a 64 x K accumulator of this warpgroup (P or
// dS) turned into A-register fragments, B a K x D tile in shared memory read MN-major (token
// rows, head dim contiguous; b_addr its first row, b_block_bytes one column block): the
// products whose left operand is the previous product's result (O += P V, dV += P^T dO,
// dK += dS^T Q, dQ += dS K), as W-column products. Waits for it.
template <int K, int D, int W = 64>
__device__ __forceinline__ void add_pb(float (&acc)[D / 64][32], const float (&p)[K / 64][32], uint32_t b_addr,
                                       uint32_t b_block_bytes) {
  uint32_t a[K / 16][4];
  acc_to_a_frags<K>(a, p);
  add_ab<K, D, W>(acc, a, b_addr, b_block_bytes);
}

// One consumer warp's release of a stage, after its products of the stage have completed:
// every lane is done with it (__syncwarp), lane 0 arrives on the stage's empty barrier.
__device__ __forceinline__ void release_stage(uint64_t* empty) {
  __syncwarp();
  if (threadIdx.x % 32 == 0) mbar_arrive(empty);
}

// Those barriers of Stages stages at `at` (KeyTileBarriers::words(Stages) words, 8-byte
// aligned), initialized by thread 0; a __syncthreads must follow before any use.
template <int Stages>
__device__ __forceinline__ KeyTileBarriers key_tile_barriers(unsigned char* at) {
  uint64_t* words = reinterpret_cast<uint64_t*>(at);
  const KeyTileBarriers bars{words, words + 1, words + 1 + Stages, words + 1 + 2 * Stages};
  if (threadIdx.x == 0) {
    mbar_init(bars.rows_full, 1);
    for (int s = 0; s < Stages; ++s) {
      mbar_init(&bars.k_full[s], 1);
      mbar_init(&bars.v_full[s], 1);
      mbar_init(&bars.kv_empty[s], kConsumerWarps);
    }
    mbar_init_fence();
  }
  return bars;
}

// The producer's loop of the kernels that stream key tiles (the forward, dQ): for i = 0 ..
// n_tiles - 1, the key tile kt_hi - 1 - i (BC tokens, from the diagonal backwards) of K and of
// V into stage i % Stages of sK and sV (each stage tile_bytes<D>(BC)), announced on k_full
// and v_full of the stage; a stage is reused after its kv_empty phase (every consumer warp
// done with it) completes. One thread runs it.
template <int D, int BC, int Stages>
__device__ __forceinline__ void produce_key_tiles(unsigned char* sK, unsigned char* sV, const KeyTileBarriers& bars,
                                                  const CUtensorMap* k_map, const CUtensorMap* v_map, int h,
                                                  int b, int kt_hi, int n_tiles) {
  constexpr uint32_t kBytes = tile_bytes<D>(BC);
  for (int i = 0; i < n_tiles; ++i) {
    const int s = i % Stages, k0 = (kt_hi - 1 - i) * BC;
    if (i >= Stages) mbar_wait(&bars.kv_empty[s], (i / Stages - 1) & 1);
    mbar_arrive_expect_tx(&bars.k_full[s], kBytes);
    tma_load_tile<D>(sK + s * kBytes, BC, k_map, &bars.k_full[s], h, k0, b);
    mbar_arrive_expect_tx(&bars.v_full[s], kBytes);
    tma_load_tile<D>(sV + s * kBytes, BC, v_map, &bars.v_full[s], h, k0, b);
  }
}

// The block of BR query rows of one (b, h) that this block of the grid (query blocks, H, B)
// owns, issued longest-first (the last query block first), and the key tiles of BC it visits
// (key_tile_range: causal, window, documents).
struct QueryBlock {
  int h, b, q0, kt_hi, n_tiles;
  int64_t row_base;  // b T: the batch row's first token
};
template <int BR, int BC>
__device__ __forceinline__ QueryBlock query_block(int T, int window, const int32_t* doc_start) {
  QueryBlock qb;
  qb.h = blockIdx.y;
  qb.b = blockIdx.z;
  qb.q0 = (gridDim.x - 1 - blockIdx.x) * BR;
  qb.row_base = int64_t(qb.b) * T;
  int kt_lo;
  key_tile_range<BR, BC>(qb.q0, T, window, doc_first(doc_start, qb.row_base, qb.q0), kt_lo, qb.kt_hi);
  qb.n_tiles = qb.kt_hi - kt_lo;
  return qb;
}

// Stores row r (0: this thread's row lane / 4 of its warp's 16, 1: that row + 8) of a 64 x D
// accumulator (D/64 m64n64 fragments) times `scale` as bf16 into `row` (the elements of one
// token and head): columns 64 blk + 8j + 2 (lane % 4) and the next, those below `cols` (the
// head dim, a multiple of 8: 96 of the 128 columns of a zero-padded hd 96 tile, else D).
template <int D>
__device__ __forceinline__ void store_acc_row(bf16_t* row, const float (&acc)[D / 64][32], int r, float scale,
                                              int cols) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int blk = 0; blk < D / 64; ++blk)
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (blk * kBlockCols + 8 * j < cols)
        *reinterpret_cast<uint32_t*>(row + blk * kBlockCols + 8 * j + 2 * (lane % 4)) =
            pack_bf16x2(acc[blk][4 * j + 2 * r] * scale, acc[blk][4 * j + 2 * r + 1] * scale);
}

// The producer's last wait: until the consumers have released the stages of the last Stages
// of n_tiles streamed tiles (tile i's release is phase i / Stages of empty[i % Stages]), so
// that consumers stuck on a copy that never lands make this mbar_wait trap.
template <int Stages>
__device__ __forceinline__ void await_releases(uint64_t* empty, int n_tiles) {
  for (int i = max(0, n_tiles - Stages); i < n_tiles; ++i) mbar_wait(&empty[i % Stages], (i / Stages) & 1);
}
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// ---- host --------------------------------------------------------------------------------
// cuTensorMapEncodeTiled from the driver through the runtime (no -lcuda link), looked up once.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    COIL_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                     cudaEnableDefault, &found));
    COIL_CHECK(found == cudaDriverEntryPointSuccess && fn,
               "attention (Hopper): the driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// Tensor map of one of q, k, v, dO: a 4-d bf16 tensor (hd, H, T, B) (innermost first; strides
// 2 hd, 2 x token_stride, 2 T x token_stride bytes: increasing in the separate, the packed and
// the dO layout), read in boxes of 64 columns x 1 head x `rows` tokens, which land in shared
// memory as `rows` rows of 128 bytes with the 128-byte swizzle; elements out of bounds read as
// zeros (CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE: zero fill): tokens past T, and at hd 96 columns
// 96..127 of the box at column 64, which pad the tile to the 128 columns of the hd-128 kernels
// (in the packed layout too: the bounds are per dimension, the next head's memory is not read).
inline CUtensorMap make_tensor_map(const char* op, const AttentionProblem& pr, const void* base,
                                   int64_t token_stride, int rows) {
  const cuuint64_t dims[4] = {cuuint64_t(pr.head_dim), cuuint64_t(pr.heads), cuuint64_t(pr.seq),
                              cuuint64_t(pr.batch)};
  const cuuint64_t strides[3] = {cuuint64_t(pr.head_dim) * 2, cuuint64_t(token_stride) * 2,
                                 cuuint64_t(pr.seq) * cuuint64_t(token_stride) * 2};
  const cuuint32_t box[4] = {cuuint32_t(kBlockCols), 1, cuuint32_t(rows), 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  CUtensorMap map;
  CUresult r = tensor_map_encoder()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void*>(base), dims,
                                    strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                    CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  COIL_CHECK(r == CUDA_SUCCESS,
             "{} (Hopper): cuTensorMapEncodeTiled failed (error {}) for B {} T {} H {} hd {} token stride {}",
             op, int(r), pr.batch, pr.seq, pr.heads, pr.head_dim, token_stride);
  return map;
}

// The window as the kernels take it (an int; beyond 2^30 it is unlimited in effect).
inline int window_of(const AttentionProblem& pr) { return int(std::min<int64_t>(pr.window, int64_t(1) << 30)); }

}  // namespace coil::kernels::cuda::hopper
