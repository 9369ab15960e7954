// The fused selective scan on CUDA. Design notes: docs/SELECTIVE_SCAN.md.
//
// Work split (forward and backward alike): a thread block owns one batch row b and a tile of
// consecutive channels; inside it, G (a power of two) neighbouring lanes share one channel and
// each lane keeps SPT of the channel's states in registers (SPT = 4 in the forward, 8 in the
// backward; d_state <= SPT G, padded states have A = B = C = 0); block_threads(SPT) threads
// make a tile of 32 channels at d_state 16. Time runs in chunks of kChunk = 32 steps: the block stages the chunk's
// inputs in shared memory (the arrays are channel-last, (batch, length, dim): coalesced
// 16-byte loads along the channels of each time step, converted to fp32, softplus applied
// once per element), then every lane runs the recurrence over the chunk sequentially, then
// the block writes the chunk's outputs with coalesced stores. B and C of the chunk are
// staged as [t][state] so that a lane reads its SPT values with 16-byte broadcasts.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "core/cuda.h"
#include "kernels/selective_scan.h"

namespace coil::kernels::cuda {
namespace {

using bf16_t = __nv_bfloat16;

constexpr int kChunk = int(kScanChunk);  // time steps staged at once
constexpr int kCkptChunks = int(kScanCheckpointSteps / kScanChunk);  // chunks between saved states
static_assert(kScanCheckpointSteps % kScanChunk == 0, "checkpoints fall on chunk ends");
constexpr int kPitch = kChunk + 1;       // shared row pitch (odd: no bank conflicts across rows)
constexpr int kSub = 8;                  // backward sub-chunk (states kept in shared memory)
// Threads per block with spt states per lane: a tile of 32 channels at d_state 16.
constexpr int block_threads(int spt) { return 512 / spt; }
constexpr int kBwdBlocksPerSm = 6;       // the B16 D1536 N16 grid (768 blocks) in one wave
static_assert(kChunk == 4 * kSub, "the backward keeps 3 sub-chunk start states in registers");
static_assert(kChunk % 4 == 0, "the forward runs 4 steps at a time");
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16_t x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t from_f<bf16_t>(float x) { return __float2bfloat16(x); }

template <class T>
struct alignas(16) Pack {
  static constexpr int n = 16 / sizeof(T);
  T v[n];
};

// 2^x on the special-function unit (flushes denormal results to zero; NaN stays NaN).
__device__ __forceinline__ float ex2(float x) {
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}
// softplus = log1p(e^x) with the fast intrinsics (log1pf is a long instruction sequence):
// for e = e^x < 0.03 the series e (1 - e/2 + e^2/3) (relative error < 7e-6; __logf(1 + e)
// would lose digits to the rounding of 1 + e), else __logf(1 + e) (relative error < 2e-5).
__device__ __forceinline__ float softplus_f(float x) {
  const float e = __expf(x);
  return x > 20.f ? x : e < 0.03f ? e * fmaf(e, fmaf(e, 1.f / 3.f, -0.5f), 1.f) : __logf(1.f + e);
}
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + __expf(-x)); }
// softplus'(x) from dt = softplus(x): sigmoid(x) = 1 - e^-dt, as dt (1 - dt/2 + dt^2/6) for
// dt < 0.03 (relative error < 4e-8; 1 - e^-dt would lose digits) and from ex2 above (relative
// error < 1e-6), instead of the long expm1f sequence.
__device__ __forceinline__ float softplus_grad_f(float dt) {
  return dt < 0.03f ? dt * fmaf(dt, fmaf(dt, 1.f / 6.f, -0.5f), 1.f) : 1.f - ex2(-dt * kLog2e);
}

// A tile is rows [0, rows) (channels, or states for B and C) x time [0, kChunk) of a
// channel-last array: element (r, tt) at g[tt * ld + r], g pointing at the tile's first row
// and step (ld = dim for u, delta, z, out; ld = state for B, C). Rows past rows_valid and
// steps past len are padding (value 0). When vec, 16-byte packs of V consecutive rows (the
// contiguous axis) are moved at once: rows, rows_valid and ld are multiples of V and g is
// 16-byte aligned. Consecutive threads take consecutive packs of a time step (coalesced).

// Pack index i -> (step tt, first row r) with per_t packs of V rows per step. rows is a power
// of two (cpb = 64 / G, npad = 8 G), so is per_t: shifts, not integer divisions (which cost
// ~20 instructions each and slowed the staging measurably).
struct PackIndex {
  int tt, r;
};
__device__ __forceinline__ PackIndex pack_index(int i, int per_t, int V) {
  return {i >> (__ffs(per_t) - 1), (i & (per_t - 1)) * V};
}

// Stages a tile in shared memory through st(r, tt, value, valid).
template <int NT, class T, class Store>
__device__ __forceinline__ void load_tile(const T* g, int64_t ld, int rows, int rows_valid, int len, bool vec,
                                          Store st) {
  if (vec) {
    constexpr int V = Pack<T>::n;
    const int per_t = rows / V;
    for (int i = threadIdx.x; i < per_t * kChunk; i += NT) {
      const auto [tt, r] = pack_index(i, per_t, V);
      if (r < rows_valid && tt < len) {
        const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(g + tt * ld + r);
#pragma unroll
        for (int j = 0; j < V; ++j) st(r + j, tt, to_f(pk.v[j]), true);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) st(r + j, tt, 0.f, false);
      }
    }
  } else {
    for (int i = threadIdx.x; i < rows * kChunk; i += NT) {
      const auto [tt, r] = pack_index(i, rows, 1);
      const bool ok = r < rows_valid && tt < len;
      st(r, tt, ok ? to_f(g[tt * ld + r]) : 0.f, ok);
    }
  }
}

// Writes the valid part of a tile: g[tt * ld + r] = f(r, tt) (fp32 converted to T).
template <int NT, class T, class F>
__device__ __forceinline__ void store_tile(T* g, int64_t ld, int rows, int rows_valid, int len, bool vec, F f) {
  if (vec) {
    constexpr int V = Pack<T>::n;
    const int per_t = rows / V;
    for (int i = threadIdx.x; i < per_t * kChunk; i += NT) {
      const auto [tt, r] = pack_index(i, per_t, V);
      if (r < rows_valid && tt < len) {
        Pack<T> pk;
#pragma unroll
        for (int j = 0; j < V; ++j) pk.v[j] = from_f<T>(f(r + j, tt));
        *reinterpret_cast<Pack<T>*>(g + tt * ld + r) = pk;
      }
    }
  } else {
    for (int i = threadIdx.x; i < rows * kChunk; i += NT) {
      const auto [tt, r] = pack_index(i, rows, 1);
      if (r < rows_valid && tt < len) g[tt * ld + r] = from_f<T>(f(r, tt));
    }
  }
}

struct ScanParams {
  const void *u, *delta, *z, *B, *C, *dout;
  const float *A, *D, *bias, *h0, *dhl;
  void *out, *du, *ddelta, *dz;
  float *final_state, *ckpt, *dA_part, *dD_part, *dbias_part, *dh0, *dBC, *sub_states;
  int batch, dim, len, nstate, G, npad, cpb, nchunks, nckpt, ntiles;
  bool softplus, vec, vec_bc, atomic_dbc;  // vec: 16-byte packs for u, delta, z, out (and grads); vec_bc: for B, C
};

// A lane's S consecutive states of one staged step (S a multiple of 4, 16-byte aligned).
template <int S>
__device__ __forceinline__ void read_states(const float* p, float* v) {
#pragma unroll
  for (int i = 0; i < S / 4; ++i) {
    const float4 a = reinterpret_cast<const float4*>(p)[i];
    v[4 * i] = a.x; v[4 * i + 1] = a.y; v[4 * i + 2] = a.z; v[4 * i + 3] = a.w;
  }
}

// Sum over the G lanes of a channel (neighbouring lanes).
__device__ __forceinline__ float group_sum(float v, int G) {
  for (int o = 1; o < G; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Asynchronous 16-byte copy global -> shared (zero-filled when src_bytes = 0).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

// Starts copying a tile (see load_tile) into the raw staging area st[kChunk][rows] (zeros in
// the padding): cp.async when vec, else plain loads (then the copy is complete on return).
template <int NT, class T>
__device__ __forceinline__ void prefetch_tile(T* st, const T* g, int64_t ld, int rows, int rows_valid, int len,
                                              bool vec) {
  constexpr int V = Pack<T>::n;
  const int per_t = rows / V;
  for (int i = threadIdx.x; i < per_t * kChunk; i += NT) {
    const auto [tt, r] = pack_index(i, per_t, V);
    T* dst = st + tt * rows + r;
    if (vec) {
      const bool ok = r < rows_valid && tt < len;
      cp_async16(dst, ok ? g + tt * ld + r : g, ok ? 16 : 0);
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) dst[j] = r + j < rows_valid && tt < len ? g[tt * ld + r + j] : from_f<T>(0.f);
    }
  }
}

// Reads a staged tile st[kChunk][rows] in 16-byte packs: store(r, tt, value) for every element.
template <int NT, class T, class Store>
__device__ __forceinline__ void convert_tile(const T* st, int rows, Store store) {
  constexpr int V = Pack<T>::n;
  const int per_t = rows / V;
  for (int i = threadIdx.x; i < per_t * kChunk; i += NT) {
    const auto [tt, r] = pack_index(i, per_t, V);
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(st + tt * rows + r);
#pragma unroll
    for (int j = 0; j < V; ++j) store(r + j, tt, to_f(pk.v[j]));
  }
}

__device__ __forceinline__ float silu_f(float z) { return __fdividef(z, 1.f + __expf(-z)); }

// Forward. Per element of (b, d, t): reads u, delta, z once, writes out once; per (b, t): reads
// B, C once per channel tile; when saving, writes the 4-byte state of each (b, d, n) at the end
// of every kCkptChunks chunks (kScanCheckpointSteps steps) and at the end.
// Exponentials: one ex2 per (b, d, t, n), plus softplus and silu per (b, d, t). The next
// chunk's inputs are copied (cp.async) into a raw staging area while this chunk computes.
// 4 states per lane (128 threads a block) measured 2-3% faster than 8 (64 threads): twice
// the warps hide the latency of each step's exponentials and shuffle better.
template <class T, int SPT, int NT = block_threads(SPT)>
__global__ void __launch_bounds__(NT) scan_forward_kernel(ScanParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int cpb = p.cpb, G = p.G, npad = p.npad;
  float* s_u = smem;                       // [cpb][kPitch]: u, then y
  float* s_dt = s_u + cpb * kPitch;        // [cpb][kPitch]: softplus(delta + bias)
  float* s_gate = s_dt + cpb * kPitch;     // [cpb][kPitch]: silu(z)
  float* s_B = s_gate + cpb * kPitch;      // [kChunk][npad]
  float* s_C = s_B + kChunk * npad;        // [kChunk][npad]
  float* s_bias = s_C + kChunk * npad;     // [cpb], padded to a multiple of 4
  T* st_u = reinterpret_cast<T*>(s_bias + ((cpb + 3) & ~3));  // raw staging, [rows][kChunk] each
  T* st_dt = st_u + cpb * kChunk;
  T* st_z = st_dt + cpb * kChunk;
  T* st_B = st_z + cpb * kChunk;
  T* st_C = st_B + npad * kChunk;

  const int b = blockIdx.y, d0 = blockIdx.x * cpb;
  const int c = threadIdx.x / G, g = threadIdx.x % G, d = d0 + c;
  const int rows_valid = min(cpb, p.dim - d0);
  const int64_t L = p.len, N = p.nstate, Dm = p.dim;
  const int64_t rowoff = int64_t(b) * L * Dm + d0;  // (b, t = 0, d0)
  const T* u = static_cast<const T*>(p.u) + rowoff;
  const T* delta = static_cast<const T*>(p.delta) + rowoff;
  const T* Bg = static_cast<const T*>(p.B) + int64_t(b) * L * N;
  const T* Cg = static_cast<const T*>(p.C) + int64_t(b) * L * N;
  const T* z = p.z ? static_cast<const T*>(p.z) + rowoff : nullptr;
  T* out = static_cast<T*>(p.out) + rowoff;

  for (int i = threadIdx.x; i < cpb; i += NT) s_bias[i] = p.bias && i < rows_valid ? p.bias[d0 + i] : 0.f;
  float h[SPT], A2[SPT];
#pragma unroll
  for (int k = 0; k < SPT; ++k) {
    const int n = g * SPT + k;
    const bool ok = d < p.dim && n < N;
    A2[k] = ok ? p.A[int64_t(d) * N + n] * kLog2e : 0.f;
    h[k] = ok && p.h0 ? p.h0[(int64_t(b) * p.dim + d) * N + n] : 0.f;
  }
  const float Dd = d < p.dim && p.D ? p.D[d] : 0.f;

  auto prefetch = [&](int ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    prefetch_tile<NT>(st_u, u + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    prefetch_tile<NT>(st_dt, delta + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    if (z) prefetch_tile<NT>(st_z, z + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    prefetch_tile<NT>(st_B, Bg + t0 * N, N, npad, int(N), len, p.vec_bc);
    prefetch_tile<NT>(st_C, Cg + t0 * N, N, npad, int(N), len, p.vec_bc);
    cp_async_commit();
  };
  prefetch(0);

  for (int ck = 0; ck < p.nchunks; ++ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    cp_async_wait_all();
    __syncthreads();  // the staged chunk is visible; the previous chunk's stores are done
    convert_tile<NT>(st_u, cpb, [&](int r, int tt, float v) { s_u[r * kPitch + tt] = v; });
    convert_tile<NT>(st_dt, cpb, [&](int r, int tt, float v) {
      if (tt < len && r < rows_valid) {  // padding stays exactly 0 (no decay, no input)
        v += s_bias[r];
        if (p.softplus) v = softplus_f(v);
      }
      s_dt[r * kPitch + tt] = v;
    });
    if (z) convert_tile<NT>(st_z, cpb, [&](int r, int tt, float v) { s_gate[r * kPitch + tt] = silu_f(v); });
    convert_tile<NT>(st_B, npad, [&](int r, int tt, float v) { s_B[tt * npad + r] = v; });
    convert_tile<NT>(st_C, npad, [&](int r, int tt, float v) { s_C[tt * npad + r] = v; });
    __syncthreads();
    if (ck + 1 < p.nchunks) prefetch(ck + 1);

    // Four steps at a time, all shared-memory loads before the one store of y, so that the
    // compiler can overlap the loads and exponentials of the four steps. Steps past len
    // (zero padding up to a multiple of 4) leave h unchanged: dt = u = B = C = 0.
    for (int t4 = 0; t4 < len; t4 += 4) {
      float dt[4], uu[4], y[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        dt[j] = s_dt[c * kPitch + t4 + j];
        uu[j] = s_u[c * kPitch + t4 + j];
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float du = dt[j] * uu[j];
        float Bv[SPT], Cv[SPT];
        read_states<SPT>(s_B + (t4 + j) * npad + g * SPT, Bv);
        read_states<SPT>(s_C + (t4 + j) * npad + g * SPT, Cv);
        float y0 = 0.f, y1 = 0.f;
#pragma unroll
        for (int k = 0; k < SPT; k += 2) {
          h[k] = fmaf(ex2(dt[j] * A2[k]), h[k], du * Bv[k]);
          h[k + 1] = fmaf(ex2(dt[j] * A2[k + 1]), h[k + 1], du * Bv[k + 1]);
          y0 = fmaf(Cv[k], h[k], y0);
          y1 = fmaf(Cv[k + 1], h[k + 1], y1);
        }
        y[j] = y0 + y1;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) y[j] = group_sum(y[j], G);
      if (g == 0) {
#pragma unroll
        for (int j = 0; j < 4; ++j) s_u[c * kPitch + t4 + j] = fmaf(Dd, uu[j], y[j]);
      }
    }
    if (p.ckpt && d < p.dim && (ck % kCkptChunks == kCkptChunks - 1 || ck + 1 == p.nchunks)) {
      float* cp = p.ckpt + ((int64_t(b) * p.dim + d) * p.nckpt + ck / kCkptChunks) * N;
#pragma unroll
      for (int k = 0; k < SPT; ++k)
        if (g * SPT + k < N) cp[g * SPT + k] = h[k];
    }
    __syncthreads();
    if (z)
      store_tile<NT>(out + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                              [&](int r, int tt) { return s_u[r * kPitch + tt] * s_gate[r * kPitch + tt]; });
    else
      store_tile<NT>(out + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                              [&](int r, int tt) { return s_u[r * kPitch + tt]; });
  }
  if (d < p.dim) {
#pragma unroll
    for (int k = 0; k < SPT; ++k)
      if (g * SPT + k < N) p.final_state[(int64_t(b) * p.dim + d) * N + g * SPT + k] = h[k];
  }
}


// Backward with recomputation, one block per (channel tile, b), chunks in reverse order. For
// each chunk: its start state is the saved one at the start of its checkpoint interval, run
// forward over the interval's earlier chunks (staged again); stage u, dt, dy = dout silu(z)
// and dout silu'(z) (fp32) and B, C; pass 1 runs the recurrence from the chunk's start
// state and keeps the states at the sub-chunk starts (steps 8, 16, 24) in registers (the
// rerun of chunk ck - 1 for chunk ck saves them in a scratch buffer, so that chunk ck - 1
// skips pass 1); then per sub-chunk of kSub = 8 steps, last first:
//  (a) recompute the sub-chunk, storing every state in shared memory (lane-private columns)
//      and y (for dz);
//  (b) the block sums dC_t[n] = sum_c dy_t[c] h_t[c, n] over its channels from those states;
//  (c) the reverse recurrence dh_t = C_t dy_t + a_{t+1} dh_{t+1} over the sub-chunk gives du,
//      ddelta and the running dA, and overwrites each consumed state with dh_t du_t;
//  (d) the block sums dB_t[n] = sum_c dh_t[c, n] du_t[c] from those.
// The sums of (b) and (d) run over the channels in a fixed order, then over channel tiles
// through per-tile partials (deterministic) or float atomics. Exponentials per (b, d, t, n):
// 1 recompute, 1 reverse, 1/2 for the rerun of every other chunk and 3/8 for pass 1 of the
// chunks that rerun their predecessor: 2.875 at kCkptChunks = 2.
// Memory: reads u, delta, z, dout, B, C once (u, delta, B of the rerun chunks twice), writes
// du, ddelta, dz once, reads one saved state per (b, d, n) per chunk; writes and reads back
// 4 x 4 bytes per (b, d, n) per rerun chunk (scratch, L2-resident: 6.3 MB at B16 D1536 N16).
constexpr int kRowsH = kSub + 1;             // states 0..kSub of a sub-chunk, per slot

template <class T, int SPT, int NT = block_threads(SPT)>
__global__ void __launch_bounds__(NT, kBwdBlocksPerSm) scan_backward_kernel(ScanParams p) {
  constexpr int kPitchH = NT + 1;  // row pitch of s_h (odd: conflict-free both ways)
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int cpb = p.cpb, G = p.G, npad = p.npad;
  T* s_u = reinterpret_cast<T*>(smem);     // [cpb][kPitch]: u, then du (in T: exact for u, du is T)
  float* s_dt = smem + (cpb * kPitch * int(sizeof(T))) / 4;  // [cpb][kPitch]: dt, then d delta (raw)
  float* s_dy = s_dt + cpb * kPitch;        // [cpb][kPitch]: dy
  float* s_dz = s_dy + cpb * kPitch;        // [cpb][kPitch]: dout silu'(z), then dz
  float* s_B = s_dz + cpb * kPitch;         // [kChunk][npad]
  float* s_C = s_B + kChunk * npad;         // [kChunk][npad]
  float* s_bias = s_C + kChunk * npad;      // [cpb]
  // The states of a sub-chunk, [SPT][kRowsH][kPitchH]: a static array of its own, so that
  // the compiler knows its stores do not alias the staged inputs and can hoist their loads.
  __shared__ float s_h[SPT * kRowsH * kPitchH];

  const int b = blockIdx.y, tile = blockIdx.x, d0 = tile * cpb;
  const int tid = threadIdx.x;
  const int c = tid / G, g = tid % G, d = d0 + c;
  const int rows_valid = min(cpb, p.dim - d0);
  const int64_t L = p.len, N = p.nstate, Dm = p.dim;
  const int64_t rowoff = int64_t(b) * L * Dm + d0;  // (b, t = 0, d0)
  const T* u = static_cast<const T*>(p.u) + rowoff;
  const T* delta = static_cast<const T*>(p.delta) + rowoff;
  const T* z = p.z ? static_cast<const T*>(p.z) + rowoff : nullptr;
  const T* dout = static_cast<const T*>(p.dout) + rowoff;
  const T* Bg = static_cast<const T*>(p.B) + int64_t(b) * L * N;
  const T* Cg = static_cast<const T*>(p.C) + int64_t(b) * L * N;
  T* du_g = static_cast<T*>(p.du) + rowoff;
  T* ddelta_g = static_cast<T*>(p.ddelta) + rowoff;
  T* dz_g = p.dz ? static_cast<T*>(p.dz) + rowoff : nullptr;
  const bool vec4 = L % 4 == 0;

  float A2[SPT], Af[SPT], dA[SPT], dhc[SPT];
  const int64_t bd = int64_t(b) * p.dim + d;
#pragma unroll
  for (int k = 0; k < SPT; ++k) {
    const int n = g * SPT + k;
    const bool ok = d < p.dim && n < N;
    Af[k] = ok ? p.A[int64_t(d) * N + n] : 0.f;
    A2[k] = Af[k] * kLog2e;
    dA[k] = 0.f;
    dhc[k] = ok && p.dhl ? p.dhl[bd * N + n] : 0.f;
  }
  const float Dd = d < p.dim && p.D ? p.D[d] : 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;
  for (int i = tid; i < cpb; i += NT) s_bias[i] = p.bias && i < rows_valid ? p.bias[d0 + i] : 0.f;
  __syncthreads();
  // This lane's state slot k, state i of the sub-chunk.
  auto hslot = [&](int k, int i) -> float& { return s_h[(k * kRowsH + i) * kPitchH + tid]; };

  // Sums over the block's channels of one quantity for the sub-chunk's steps [ts, ts + cnt):
  // dC (rows i + 1, weighted by dy) or dB (rows i). A work item is (state n, 4 consecutive
  // steps, half of the channels: even or odd); the two halves are neighbouring lanes and add
  // up with one shuffle, always in the same order. The sums go to the per-tile partials or the
  // atomic accumulator (rows q of 2N: dC | dB).
  auto reduce_sub = [&](bool is_dc, int64_t t0, int ts, int cnt) {
    constexpr int groups = kSub / 4;
    const int work = int(N) * groups * 2;
    for (int base = 0; base < work; base += NT) {  // uniform trip count: shuffles below
      const int unit = base + tid, half = unit & 1, rest = unit >> 1;
      const int n = rest / groups, i0 = (rest % groups) * 4;
      const bool active = unit < work && i0 < cnt;
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      if (active) {
        const int gg = n / SPT, k = n % SPT;
        const float* rows = s_h + (k * kRowsH + i0 + (is_dc ? 1 : 0)) * kPitchH + gg;
        const float* dyr = s_dy + ts + i0;
#pragma unroll 4
        for (int cc = half; cc < cpb; cc += 2) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float v = rows[i * kPitchH + cc * G];
            acc[i] = is_dc ? fmaf(v, dyr[cc * kPitch + i], acc[i]) : acc[i] + v;
          }
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], 1);
      if (!active || half) continue;
      const int q = is_dc ? n : int(N) + n;
      const int64_t t = t0 + ts + i0;
      float* dst = p.atomic_dbc ? p.dBC + (int64_t(b) * 2 * N + q) * L + t
                                : p.dBC + ((int64_t(b) * p.ntiles + tile) * 2 * N + q) * L + t;
      if (vec4 && i0 + 4 <= cnt) {
        const float4 v = make_float4(acc[0], acc[1], acc[2], acc[3]);
        if (p.atomic_dbc) atomicAdd(reinterpret_cast<float4*>(dst), v);
        else *reinterpret_cast<float4*>(dst) = v;
      } else {
        for (int i = 0; i < 4 && i0 + i < cnt; ++i) {
          if (p.atomic_dbc) atomicAdd(dst + i, acc[i]);
          else dst[i] = acc[i];
        }
      }
    }
  };

  // Stages what the recurrence reads: u, dt = softplus(delta + bias), B of the chunk at t0.
  auto stage_recurrence = [&](int64_t t0, int len) {
    load_tile<NT>(u + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                           [&](int r, int tt, float v, bool) { s_u[r * kPitch + tt] = from_f<T>(v); });
    load_tile<NT>(delta + t0 * Dm, Dm, cpb, rows_valid, len, p.vec, [&](int r, int tt, float v, bool ok) {
      if (ok) {
        v += s_bias[r];
        if (p.softplus) v = softplus_f(v);
      }
      s_dt[r * kPitch + tt] = v;
    });
    load_tile<NT>(Bg + t0 * N, N, npad, int(N), len, p.vec_bc,
                           [&](int r, int tt, float v, bool) { s_B[tt * npad + r] = v; });
  };
  // Runs this lane's states h over the staged steps [ts, te).
  auto advance = [&](float* h, int ts, int te) {
#pragma unroll 2
    for (int tt = ts; tt < te; ++tt) {
      const float dt = s_dt[c * kPitch + tt], du = dt * to_f(s_u[c * kPitch + tt]);
      float Bv[SPT];
      read_states<SPT>(s_B + tt * npad + g * SPT, Bv);
#pragma unroll
      for (int k = 0; k < SPT; ++k) h[k] = fmaf(ex2(dt * A2[k]), h[k], du * Bv[k]);
    }
  };
  // This lane's state at step 8 j of the last rerun chunk (slot j of 4): kept in a scratch
  // buffer of its own (coalesced, [block][j][k][lane]) until that chunk is processed next.
  auto sub_state = [&](int j, int k) -> float& {
    return p.sub_states[((int64_t(b * p.ntiles + tile) * (kChunk / kSub) + j) * SPT + k) * NT + tid];
  };
  // The state at the start of chunk ck into h: the saved state (or the initial one) at the
  // start of its checkpoint interval, then the interval's earlier chunks recomputed (full
  // chunks: only the last chunk can be partial). The rerun of chunk ck - 1 keeps its states at
  // the sub-chunk starts: they replace pass 1 when chunk ck - 1 is processed next.
  auto chunk_start_state = [&](int ck, float* h) {
    const int c0 = ck - ck % kCkptChunks;
#pragma unroll
    for (int k = 0; k < SPT; ++k) {
      const int n = g * SPT + k;
      float v = 0.f;
      if (d < p.dim && n < N) {
        if (c0 > 0) v = p.ckpt[(bd * p.nckpt + c0 / kCkptChunks - 1) * N + n];
        else if (p.h0) v = p.h0[bd * N + n];
      }
      h[k] = v;
    }
    for (int cr = c0; cr < ck; ++cr) {
      stage_recurrence(int64_t(cr) * kChunk, kChunk);
      __syncthreads();
      for (int j = 0; j < kChunk / kSub; ++j) {
        if (cr + 1 == ck) {
#pragma unroll
          for (int k = 0; k < SPT; ++k) sub_state(j, k) = h[k];
        }
        advance(h, j * kSub, (j + 1) * kSub);
      }
      __syncthreads();  // the staging area is reused
    }
  };

  for (int ck = p.nchunks - 1; ck >= 0; --ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    float h0[SPT], hb[3][SPT];
    // Chunk ck + 1 reran this (full) chunk and kept its sub-chunk start states.
    const bool rerun_kept = ck + 1 < p.nchunks && (ck + 1) % kCkptChunks != 0;
    if (rerun_kept) {
#pragma unroll
      for (int k = 0; k < SPT; ++k) {
        h0[k] = sub_state(0, k);
#pragma unroll
        for (int j = 0; j < 3; ++j) hb[j][k] = sub_state(j + 1, k);
      }
    } else {
      chunk_start_state(ck, h0);
    }
    stage_recurrence(t0, len);
    load_tile<NT>(dout + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                           [&](int r, int tt, float v, bool) { s_dy[r * kPitch + tt] = v; });
    if (z) {
      load_tile<NT>(z + t0 * Dm, Dm, cpb, rows_valid, len, p.vec, [&](int r, int tt, float zv, bool) {
        // The same thread wrote s_dy at this position just above (identical index mapping).
        const float go = s_dy[r * kPitch + tt], s = sigmoid_f(zv);
        s_dy[r * kPitch + tt] = go * zv * s;
        s_dz[r * kPitch + tt] = go * s * (1.f + zv * (1.f - s));
      });
    }
    load_tile<NT>(Cg + t0 * N, N, npad, int(N), len, p.vec_bc,
                           [&](int r, int tt, float v, bool) { s_C[tt * npad + r] = v; });
    __syncthreads();

    // Pass 1: the states at the sub-chunk starts (unless kept from the rerun).
    const int nsub = (len + kSub - 1) / kSub;
    if (!rerun_kept) {
      float h[SPT];
#pragma unroll
      for (int k = 0; k < SPT; ++k) h[k] = h0[k];
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        if (j + 1 < nsub) advance(h, j * kSub, (j + 1) * kSub);
#pragma unroll
        for (int k = 0; k < SPT; ++k) hb[j][k] = h[k];
      }
    }

    for (int j = nsub - 1; j >= 0; --j) {
      const int ts = j * kSub, te = min(len, ts + kSub), cnt = te - ts;
      // (a) Recompute the sub-chunk's states; y for dz.
      {
        float h[SPT];
#pragma unroll
        for (int k = 0; k < SPT; ++k) {
          h[k] = j == 0 ? h0[k] : j == 1 ? hb[0][k] : j == 2 ? hb[1][k] : hb[2][k];
          hslot(k, 0) = h[k];
        }
#pragma unroll 2
        for (int tt = ts; tt < te; ++tt) {
          const float dt = s_dt[c * kPitch + tt], uu = to_f(s_u[c * kPitch + tt]), du = dt * uu;
          float Bv[SPT], Cv[SPT];
          read_states<SPT>(s_B + tt * npad + g * SPT, Bv);
          read_states<SPT>(s_C + tt * npad + g * SPT, Cv);
          float y0 = 0.f, y1 = 0.f;
#pragma unroll
          for (int k = 0; k < SPT; k += 2) {
            h[k] = fmaf(ex2(dt * A2[k]), h[k], du * Bv[k]);
            h[k + 1] = fmaf(ex2(dt * A2[k + 1]), h[k + 1], du * Bv[k + 1]);
            hslot(k, tt - ts + 1) = h[k];
            hslot(k + 1, tt - ts + 1) = h[k + 1];
            y0 = fmaf(Cv[k], h[k], y0);
            y1 = fmaf(Cv[k + 1], h[k + 1], y1);
          }
          const float y = group_sum(y0 + y1, G);
          if (z && g == 0) s_dz[c * kPitch + tt] *= fmaf(Dd, uu, y);
        }
      }
      __syncthreads();
      // (b) dC over the block's channels.
      reduce_sub(true, t0, ts, cnt);
      __syncthreads();
      // (c) Reverse over the sub-chunk.
#pragma unroll 2
      for (int tt = te - 1; tt >= ts; --tt) {
        const float dt = s_dt[c * kPitch + tt], uu = to_f(s_u[c * kPitch + tt]), du = dt * uu;
        const float dy = s_dy[c * kPitch + tt];
        float Bv[SPT], Cv[SPT];
        read_states<SPT>(s_B + tt * npad + g * SPT, Bv);
        read_states<SPT>(s_C + tt * npad + g * SPT, Cv);
        float sum_dhB = 0.f, sum_q = 0.f;
#pragma unroll
        for (int k = 0; k < SPT; ++k) {
          const float a = ex2(dt * A2[k]);
          float& slot = hslot(k, tt - ts);
          const float hp = slot;
          const float dh = fmaf(Cv[k], dy, dhc[k]);
          const float q = dh * (a * hp);
          dA[k] = fmaf(q, dt, dA[k]);
          sum_q = fmaf(q, Af[k], sum_q);
          sum_dhB = fmaf(dh, Bv[k], sum_dhB);
          slot = dh * du;
          dhc[k] = a * dh;
        }
        sum_q = group_sum(sum_q, G);
        sum_dhB = group_sum(sum_dhB, G);
        if (g == 0) {
          float ddt = fmaf(sum_dhB, uu, sum_q);
          // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x))
          if (p.softplus) ddt *= softplus_grad_f(dt);
          s_u[c * kPitch + tt] = from_f<T>(fmaf(sum_dhB, dt, Dd * dy));
          s_dt[c * kPitch + tt] = ddt;
          dD_acc = fmaf(dy, uu, dD_acc);
          dbias_acc += ddt;
        }
      }
      __syncthreads();
      // (d) dB over the block's channels.
      reduce_sub(false, t0, ts, cnt);
      __syncthreads();
    }
    // Write du, d delta, dz of the chunk.
    store_tile<NT>(du_g + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                            [&](int r, int tt) { return to_f(s_u[r * kPitch + tt]); });
    store_tile<NT>(ddelta_g + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                            [&](int r, int tt) { return s_dt[r * kPitch + tt]; });
    if (dz_g)
      store_tile<NT>(dz_g + t0 * Dm, Dm, cpb, rows_valid, len, p.vec, [&](int r, int tt) { return s_dz[r * kPitch + tt]; });
    __syncthreads();
  }

  if (d < p.dim) {
#pragma unroll
    for (int k = 0; k < SPT; ++k) {
      const int n = g * SPT + k;
      if (n < N) {
        p.dA_part[bd * N + n] = dA[k];
        if (p.dh0) p.dh0[bd * N + n] = dhc[k];
      }
    }
    if (g == 0) {
      p.dD_part[bd] = dD_acc;
      p.dbias_part[bd] = dbias_acc;
    }
  }
}


// out[m] = sum_k in[k * m_total + m], k in order: fixed-order reductions over the batch.
__global__ void sum_leading_kernel(const float* in, float* out, int64_t k_total, int64_t m_total) {
  for (int64_t m = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; m < m_total; m += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t k = 0; k < k_total; ++k) s += in[k * m_total + m];
    out[m] = s;
  }
}

// dC[b][t][n] = sum_tile part[b][tile][n][t], dB from rows N + n; tiles in order. Reads the
// partials once, writes dB and dC once (state fastest: coalesced writes).
template <class T>
__global__ void reduce_dbc_kernel(const float* part, T* dB, T* dC, int64_t batch, int64_t ntiles, int64_t N,
                                  int64_t L) {
  const int64_t total = batch * 2 * N * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t q = i % (2 * N), t = (i / (2 * N)) % L, b = i / (2 * N * L);
    float s = 0.f;
    for (int64_t k = 0; k < ntiles; ++k) s += part[((b * ntiles + k) * 2 * N + q) * L + t];
    if (q < N) dC[(b * L + t) * N + q] = from_f<T>(s);
    else dB[(b * L + t) * N + q - N] = from_f<T>(s);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

ScanParams make_params(const ScanArgs& a, int spt) {
  ScanParams p{};
  p.u = a.u.raw();
  p.delta = a.delta.raw();
  p.z = a.z.defined() ? a.z.raw() : nullptr;
  p.B = a.B.raw();
  p.C = a.C.raw();
  p.A = a.A.data<float>();
  p.D = a.D.defined() ? a.D.data<float>() : nullptr;
  p.bias = a.delta_bias.defined() ? a.delta_bias.data<float>() : nullptr;
  p.h0 = a.initial_state.defined() ? a.initial_state.data<float>() : nullptr;
  p.batch = int(a.u.size(0));
  p.len = int(a.u.size(1));
  p.dim = int(a.u.size(2));
  p.nstate = int(a.A.size(1));
  int G = 1;
  while (G * spt < p.nstate) G *= 2;
  p.G = G;
  p.npad = std::max(G * spt, 8);  // at least one 16-byte bf16 pack per staged step
  p.cpb = block_threads(spt) / G;
  p.nchunks = int((a.u.size(1) + kChunk - 1) / kChunk);
  p.nckpt = int((a.u.size(1) + kScanCheckpointSteps - 1) / kScanCheckpointSteps);
  p.ntiles = (p.dim + p.cpb - 1) / p.cpb;
  p.softplus = a.delta_softplus;
  const int V = a.u.dtype() == DType::bf16 ? 8 : 4;  // elements per 16-byte pack; cpb and npad are multiples
  p.vec = p.dim % V == 0;
  for (const Tensor* t : {&a.u, &a.delta, &a.z})
    if (t->defined() && !aligned16(t->raw())) p.vec = false;
  p.vec_bc = p.nstate % V == 0 && aligned16(a.B.raw()) && aligned16(a.C.raw());
  return p;
}

void check_sizes(const char* op, const ScanArgs& a) {
  COIL_CHECK(a.u.size(2) < (int64_t(1) << 31) && a.u.size(1) < (int64_t(1) << 31) && a.u.size(0) <= 65535,
             "{}: batch must be <= 65535 and dim, length < 2^31 on CUDA, got u {}", op, describe(a.u));
}

template <int SPT>
void launch_forward(const ScanArgs& a, const ScanResult& r) {
  ScanParams p = make_params(a, SPT);
  p.out = r.out.raw();
  p.final_state = r.final_state.data<float>();
  p.ckpt = r.checkpoints.defined() ? r.checkpoints.data<float>() : nullptr;
  const size_t elem = dtype_size(a.u.dtype());
  const size_t smem = sizeof(float) * (size_t(3) * p.cpb * kPitch + size_t(2) * kChunk * p.npad + ((p.cpb + 3) & ~3)) +
                      elem * kChunk * (size_t(3) * p.cpb + size_t(2) * p.npad);
  dim3 grid(unsigned(p.ntiles), unsigned(p.batch));
  constexpr int NT = block_threads(SPT);
  cudaStream_t stream = coil::cuda::compute_stream();
  if (a.u.dtype() == DType::bf16) {
    COIL_CUDA_CHECK(cudaFuncSetAttribute(scan_forward_kernel<bf16_t, SPT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    scan_forward_kernel<bf16_t, SPT><<<grid, NT, smem, stream>>>(p);
  } else {
    COIL_CUDA_CHECK(cudaFuncSetAttribute(scan_forward_kernel<float, SPT>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    scan_forward_kernel<float, SPT><<<grid, NT, smem, stream>>>(p);
  }
  COIL_CUDA_CHECK_LAUNCH("selective_scan_forward", "u {}, A {}, grid {}x{}, smem {}", describe(a.u), describe(a.A),
                         grid.x, grid.y, smem);
}

}  // namespace

void selective_scan_forward(const ScanArgs& a, const ScanResult& r) {
  check_sizes("selective_scan_forward", a);
  launch_forward<4>(a, r);
}

void selective_scan_backward(const ScanArgs& a, const ScanResult& saved, const Tensor& grad_out,
                             const Tensor& grad_final_state, const ScanGrads& grads, bool deterministic) {
  const char* op = "selective_scan_backward";
  check_sizes(op, a);
  constexpr int spt = 8;
  ScanParams p = make_params(a, spt);
  if (!aligned16(grad_out.raw())) p.vec = false;
  for (const Tensor* t : {&grads.du, &grads.ddelta, &grads.dz})
    if (t->defined() && !aligned16(t->raw())) p.vec = false;
  const Device dev = a.u.device();
  const int64_t B = p.batch, Dm = p.dim, N = p.nstate, L = p.len;
  p.dout = grad_out.raw();
  p.dhl = grad_final_state.defined() ? grad_final_state.data<float>() : nullptr;
  p.ckpt = saved.checkpoints.data<float>();
  p.du = grads.du.raw();
  p.ddelta = grads.ddelta.raw();
  p.dz = grads.dz.defined() ? grads.dz.raw() : nullptr;
  p.dh0 = grads.dinitial_state.defined() ? grads.dinitial_state.data<float>() : nullptr;
  Tensor dA_part = Tensor::empty({B, Dm, N}, DType::f32, dev);
  Tensor dD_part = Tensor::empty({B, Dm}, DType::f32, dev);
  Tensor dbias_part = Tensor::empty({B, Dm}, DType::f32, dev);
  p.dA_part = dA_part.data<float>();
  p.dD_part = dD_part.data<float>();
  p.dbias_part = dbias_part.data<float>();
  Tensor sub_states = Tensor::empty({B * p.ntiles * (kChunk / kSub) * spt * block_threads(spt)}, DType::f32, dev);
  p.sub_states = sub_states.data<float>();
  p.atomic_dbc = !deterministic;
  Tensor dbc = Tensor::empty({B, deterministic ? int64_t(p.ntiles) : 1, 2 * N, L}, DType::f32, dev);
  p.dBC = dbc.data<float>();
  cudaStream_t stream = coil::cuda::compute_stream();
  if (!deterministic) COIL_CUDA_CHECK(cudaMemsetAsync(p.dBC, 0, dbc.nbytes(), stream));

  const size_t smem = dtype_size(a.u.dtype()) * p.cpb * kPitch +
                      sizeof(float) * (size_t(3) * p.cpb * kPitch + size_t(2) * kChunk * p.npad + p.cpb);
  dim3 grid(unsigned(p.ntiles), unsigned(p.batch));
  auto launch = [&](auto kernel, int threads) {
    COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, threads, smem, stream>>>(p);
  };
  const bool bf = a.u.dtype() == DType::bf16;
  if (bf) launch(scan_backward_kernel<bf16_t, spt>, block_threads(spt));
  else launch(scan_backward_kernel<float, spt>, block_threads(spt));
  COIL_CUDA_CHECK_LAUNCH("selective_scan_backward", "u {}, A {}, grid {}x{}, smem {}", describe(a.u), describe(a.A),
                         grid.x, grid.y, smem);

  // dB, dC: sum the tiles (or just convert the atomic accumulator) into (batch, state, length).
  {
    const int64_t total = B * 2 * N * L;
    const int blocks = int(std::min<int64_t>((total + 255) / 256, 65535));
    const int64_t ntiles = deterministic ? p.ntiles : 1;
    if (a.u.dtype() == DType::bf16)
      reduce_dbc_kernel<bf16_t><<<blocks, 256, 0, stream>>>(p.dBC, static_cast<bf16_t*>(grads.dB.raw()),
                                                           static_cast<bf16_t*>(grads.dC.raw()), B, ntiles, N, L);
    else
      reduce_dbc_kernel<float><<<blocks, 256, 0, stream>>>(p.dBC, grads.dB.data<float>(), grads.dC.data<float>(), B,
                                                          ntiles, N, L);
    COIL_CUDA_CHECK_LAUNCH("selective_scan_backward/reduce_dbc", "batch {}, tiles {}, state {}, length {}", B, ntiles, N, L);
  }
  auto sum_batch = [&](const Tensor& part, const Tensor& out, int64_t m) {
    const int blocks = int(std::min<int64_t>((m + 255) / 256, 4096));
    sum_leading_kernel<<<blocks, 256, 0, stream>>>(part.data<float>(), out.data<float>(), B, m);
    COIL_CUDA_CHECK_LAUNCH("selective_scan_backward/sum_batch", "parts {}", describe(part));
  };
  sum_batch(dA_part, grads.dA, Dm * N);
  if (grads.dD.defined()) sum_batch(dD_part, grads.dD, Dm);
  if (grads.ddelta_bias.defined()) sum_batch(dbias_part, grads.ddelta_bias, Dm);
}

}  // namespace coil::kernels::cuda
