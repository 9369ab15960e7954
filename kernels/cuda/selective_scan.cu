// The fused selective scan on CUDA. Design notes: docs/SELECTIVE_SCAN.md.
//
// Work split (forward and backward alike): a thread block owns one batch row b, a tile of
// consecutive channels and one segment of time; inside it, G (a power of two) neighbouring
// lanes share one channel and each lane keeps SPT of the channel's states in registers (SPT = 4
// in the forward, 8 in the backward; d_state <= SPT G, padded states have A = B = C = 0);
// block_threads(SPT) threads make a tile of 32 channels at d_state 16.
//
// Time parallelism. Every step maps the state affinely, h -> a h + b, and so does every run
// of steps: a segment is the pair (P, E) = (the product of its decays, its end state from a
// zero start). When the (channel tiles x batch) blocks would leave the GPU partly idle (small
// batch, long sequences), time is cut into segments of whole checkpoint intervals, each run by
// its own blocks: a first kernel computes (P, E) of every segment but the last, then each
// block of the main kernel starts from the initial state composed with the (P, E) of the
// segments before its own. The backward does the same in reverse time for the carried dh.
//
// Within a block, time runs in chunks of kChunk = 32 steps: the block stages the chunk's inputs
// in shared memory (the arrays are channel-last, (batch, length, dim): coalesced 16-byte loads
// along the channels of each time step, converted to fp32, softplus applied once per element),
// then every lane runs the recurrence over the chunk sequentially, then the block writes the
// chunk's outputs with coalesced stores. B and C of the chunk are staged as [t][state] so that
// a lane reads its SPT values with 16-byte broadcasts.
//
// Document starts (seq_idx): a per-chunk bit mask, bit tt set when step t0 + tt starts a
// document; there the state before the step is zero (decay 0), in every kernel below.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "core/cuda.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/selective_scan.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kChunk = int(kScanChunk);  // time steps staged at once
constexpr int kCkptChunks = int(kScanCheckpointSteps / kScanChunk);  // chunks between saved states
static_assert(kScanCheckpointSteps % kScanChunk == 0, "checkpoints fall on chunk ends");
static_assert(kChunk == 32, "a chunk's document starts are the bits of one 32-bit mask");
constexpr int kPitch = kChunk + 1;       // shared row pitch of the backward (odd: no bank conflicts across rows)
constexpr int kSub = 8;                  // backward sub-chunk (states kept in shared memory)
// Threads per block with spt states per lane: a tile of 32 channels at d_state 16.
constexpr int block_threads(int spt) { return 512 / spt; }
constexpr int kFwdSpt = 4, kBwdSpt = 8;
// The channel-pair backward (ScanBackward::channel_pairs): 2 channels x 4 states a lane, the
// same 8 slots as kBwdSpt.
constexpr int kPairChannels = 2, kPairSpt = 4;
static_assert(kPairChannels * kPairSpt == kBwdSpt, "both backward kernels share the block shape and scratch layout");
constexpr int kBwdBlocksPerSm = 6;       // the B16 D1536 N16 grid (768 blocks) in one wave
// The forward's 8 blocks of 4 warps an SM (64 registers a thread; its shared memory allows 8 to
// 9 at d_state 16): left alone, the compiler keeps more loads in flight at up to 96 (bf16) or
// 164 (f32) registers and fits only 5 (or 3) blocks.
constexpr int kFwdBlocksPerSm = 8;
static_assert(kChunk == 4 * kSub, "the backward keeps 3 sub-chunk start states in registers");
static_assert(kChunk % 4 == 0, "the forward runs 4 steps at a time");

// e^x on the special-function unit, flushing results below 2^-126 to zero: __expf keeps
// denormal results, at four more instructions per call (a compare and two predicated
// multiplies around the ex2), which the staging of every element paid three times.
__device__ __forceinline__ float exp_ftz(float x) { return ex2(x * kLog2e); }
// softplus = log1p(e^x) with the fast intrinsics (log1pf is a long instruction sequence):
// for e = e^x < 0.03 the series e (1 - e/2 + e^2/3) (relative error < 7e-6; __logf(1 + e)
// would lose digits to the rounding of 1 + e), else __logf(1 + e) (relative error < 2e-5).
__device__ __forceinline__ float softplus_f(float x) {
  const float e = exp_ftz(x);
  return x > 20.f ? x : e < 0.03f ? e * fmaf(e, fmaf(e, 1.f / 3.f, -0.5f), 1.f) : __logf(1.f + e);
}
__device__ __forceinline__ float sigmoid_f(float x) { return __fdividef(1.f, 1.f + exp_ftz(-x)); }
// softplus'(x) from dt = softplus(x): sigmoid(x) = 1 - e^-dt, as dt (1 - dt/2 + dt^2/6) for
// dt < 0.03 (relative error < 4e-8; 1 - e^-dt would lose digits) and from ex2 above (relative
// error < 1e-6), instead of the long expm1f sequence.
__device__ __forceinline__ float softplus_grad_f(float dt) {
  return dt < 0.03f ? dt * fmaf(dt, fmaf(dt, 1.f / 6.f, -0.5f), 1.f) : 1.f - ex2(-dt * kLog2e);
}
__device__ __forceinline__ float silu_f(float z) { return __fdividef(z, 1.f + exp_ftz(-z)); }

// Element (r, tt) of a staged [channel][step] fp32 tile of the forward: rows of kChunk floats
// whose 4-step groups are permuted by XOR with (r ^ r >> 2) & 7, so that a lane reads steps
// 4i .. 4i + 3 of its channel (in order, 16-byte aligned) with one 16-byte load. Both that
// load (the up to 8 channels of a warp hit 8 different groups of 4 banks) and the staging's
// transposing stores (a warp stores one row r = r0 + j for 8 steps x 4 packs of channels,
// bf16, or 4 steps x 8 packs, f32) are conflict-free at 32 channels a tile; where the tile
// is wider (d_state <= 8) they conflict no more than a pitch of 33 did.
__device__ __forceinline__ int tile_at(int r, int tt) { return r * kChunk + (tt ^ (((r ^ (r >> 2)) & 7) << 2)); }

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
  const uint32_t* resets;  // (batch, nchunks) document-start masks, or null
  void *out, *du, *ddelta, *dz;
  float *final_state, *ckpt, *dA_part, *dD_part, *dbias_part, *dh0, *dBC, *sub_states;
  // Segments: (batch, nseg, dim, state) each. Forward: P and E of a segment (end state from a
  // zero start). Backward: P and the dh carried out of a segment's start from a zero carry in.
  float *seg_decay, *seg_state;
  int batch, dim, len, nstate, G, npad, cpb, nchunks, nckpt, ntiles;
  int nseg, seg_chunks;  // segments of time (blockIdx.z) and chunks per segment
  bool softplus, vec, vec_bc, atomic_dbc;  // vec: 16-byte packs for u, delta, z, out (and grads); vec_bc: for B, C
};

// The chunks [begin, end) of segment seg.
struct ChunkRange {
  int begin, end;
};
__device__ __forceinline__ ChunkRange segment_chunks(const ScanParams& p, int seg) {
  const int begin = seg * p.seg_chunks;
  return {begin, min(p.nchunks, begin + p.seg_chunks)};
}
__device__ __forceinline__ int64_t seg_index(const ScanParams& p, int b, int seg, int d, int n) {
  return ((int64_t(b) * p.nseg + seg) * p.dim + d) * p.nstate + n;
}
__device__ __forceinline__ uint32_t chunk_resets(const ScanParams& p, int b, int ck) {
  return p.resets ? __ldg(p.resets + int64_t(b) * p.nchunks + ck) : 0u;
}
// f(std::true_type) when some steps of `mask` start a document, else f(std::false_type): the
// common path tests no bit and selects no decay per state. In f, a step starts a document iff
// decltype(arg)::value && (mask >> step & 1).
template <class F>
__device__ __forceinline__ void with_document_starts(uint32_t mask, F&& f) {
  if (mask) f(std::true_type{});
  else f(std::false_type{});
}

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

// y of 4 steps (this lane's partial sums over its states, one per step) summed over the G lanes
// of its channel, plus D u, stored to the channel's 4 consecutive staged steps `dst`. A
// transposed butterfly: at the first level (lanes g, g ^ 1) each lane sends the partial sums of
// two steps and keeps the other two, at the second (g, g ^ 2) sends one and keeps one, then
// plain butterfly levels for G > 4; lane g < 4 ends with the whole sum of step 2 (g & 1) +
// (g >> 1 & 1) and stores it. 3 shuffles at G = 4 (instead of 8 for four separate sums), one
// 4-byte store per lane (all 4 steps of the channel's 16-byte group at once); at G = 2 two
// shuffles and an 8-byte store per lane, at G = 1 none and one 16-byte store. Each step's sum
// adds only that step's values (NaN stays in its step). G is uniform over the warp.
__device__ __forceinline__ void store_y4(float* dst, const float (&y)[4], float4 u, float Dd, int g, int G) {
  constexpr unsigned kAll = 0xffffffffu;
  if (G == 1) {
    *reinterpret_cast<float4*>(dst) =
        make_float4(fmaf(Dd, u.x, y[0]), fmaf(Dd, u.y, y[1]), fmaf(Dd, u.z, y[2]), fmaf(Dd, u.w, y[3]));
    return;
  }
  const bool odd = g & 1;  // keeps steps 2, 3 (else 0, 1)
  const float s0 = (odd ? y[2] : y[0]) + __shfl_xor_sync(kAll, odd ? y[0] : y[2], 1);
  const float s1 = (odd ? y[3] : y[1]) + __shfl_xor_sync(kAll, odd ? y[1] : y[3], 1);
  if (G == 2) {
    *reinterpret_cast<float2*>(dst + (odd ? 2 : 0)) =
        make_float2(fmaf(Dd, odd ? u.z : u.x, s0), fmaf(Dd, odd ? u.w : u.y, s1));
    return;
  }
  const bool second = g & 2;  // keeps the second of its two steps
  float s = (second ? s1 : s0) + __shfl_xor_sync(kAll, second ? s0 : s1, 2);
  for (int o = 4; o < G; o <<= 1) s += __shfl_xor_sync(kAll, s, o);
  const float uj = odd ? (second ? u.w : u.z) : (second ? u.y : u.x);
  if (g < 4) dst[(odd ? 2 : 0) + (second ? 1 : 0)] = fmaf(Dd, uj, s);
}

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

// dt = softplus(delta + bias) for the valid part of a tile; the padding stays exactly 0 (no
// decay, no input).
__device__ __forceinline__ float staged_dt(const ScanParams& p, float v, float bias, bool valid) {
  if (!valid) return v;
  v += bias;
  return p.softplus ? softplus_f(v) : v;
}

// Forward (kStateOnly false). Per element of (b, d, t): reads u, delta, z once, writes out
// once; per (b, t): reads B, C once per channel tile; when saving, writes the 4-byte state of
// each (b, d, n) at the end of every kCkptChunks chunks (kScanCheckpointSteps steps) and at the
// end. Exponentials: one ex2 per (b, d, t, n), plus softplus and silu per (b, d, t). The next chunk's inputs are copied (cp.async)
// into a raw staging area while this chunk computes. A block of segment seg > 0 starts from
// the initial state composed with the (P, E) of segments 0 .. seg - 1.
// kStateOnly: the segment pass. Runs segment seg from a zero state reading u, delta, B only
// (no C, z, out, checkpoints) and writes the segment's (P, E): P = 2^(A log2(e) sum dt), or 0
// when a document starts inside the segment.
template <class T, int SPT, bool kStateOnly, int NT = block_threads(SPT)>
__global__ void __launch_bounds__(NT, kFwdBlocksPerSm) scan_forward_kernel(ScanParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int cpb = p.cpb, G = p.G, npad = p.npad;
  float* s_u = smem;                       // [cpb][kChunk] (tile_at): u, then y (kStateOnly: dt u)
  float* s_dt = s_u + cpb * kChunk;        // [cpb][kChunk] (tile_at): softplus(delta + bias)
  float* s_gate = s_dt + cpb * kChunk;     // [cpb][kChunk] (tile_at): silu(z)
  float* s_B = s_gate + cpb * kChunk;      // [kChunk][npad]
  float* s_C = s_B + kChunk * npad;        // [kChunk][npad]
  float* s_bias = s_C + kChunk * npad;     // [cpb], padded to a multiple of 4
  T* st_u = reinterpret_cast<T*>(s_bias + ((cpb + 3) & ~3));  // raw staging, [rows][kChunk] each
  T* st_dt = st_u + cpb * kChunk;
  T* st_z = st_dt + cpb * kChunk;
  T* st_B = st_z + cpb * kChunk;
  T* st_C = st_B + npad * kChunk;

  const int b = blockIdx.y, d0 = blockIdx.x * cpb, seg = blockIdx.z;
  const int c = threadIdx.x / G, g = threadIdx.x % G, d = d0 + c;
  const int rows_valid = min(cpb, p.dim - d0);
  const int64_t L = p.len, N = p.nstate, Dm = p.dim;
  const int64_t rowoff = int64_t(b) * L * Dm + d0;  // (b, t = 0, d0)
  const T* u = static_cast<const T*>(p.u) + rowoff;
  const T* delta = static_cast<const T*>(p.delta) + rowoff;
  const T* Bg = static_cast<const T*>(p.B) + int64_t(b) * L * N;
  const T* Cg = static_cast<const T*>(p.C) + int64_t(b) * L * N;
  const T* z = !kStateOnly && p.z ? static_cast<const T*>(p.z) + rowoff : nullptr;
  T* out = static_cast<T*>(p.out) + rowoff;
  const ChunkRange chunks = segment_chunks(p, seg);

  for (int i = threadIdx.x; i < cpb; i += NT) s_bias[i] = p.bias && i < rows_valid ? p.bias[d0 + i] : 0.f;
  float h[SPT], A2[SPT];
#pragma unroll
  for (int k = 0; k < SPT; ++k) {
    const int n = g * SPT + k;
    const bool ok = d < p.dim && n < N;
    A2[k] = ok ? p.A[int64_t(d) * N + n] * kLog2e : 0.f;
    h[k] = ok && !kStateOnly && p.h0 ? p.h0[(int64_t(b) * p.dim + d) * N + n] : 0.f;
    if (!kStateOnly && ok)
      for (int s = 0; s < seg; ++s) h[k] = fmaf(p.seg_decay[seg_index(p, b, s, d, n)], h[k], p.seg_state[seg_index(p, b, s, d, n)]);
  }
  const float Dd = d < p.dim && p.D ? p.D[d] : 0.f;
  float dt_sum = 0.f;        // kStateOnly: sum of dt over the segment
  uint32_t any_reset = 0u;   // kStateOnly: a document starts inside the segment

  uint32_t next_resets = 0u;
  auto prefetch = [&](int ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    prefetch_tile<NT>(st_u, u + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    prefetch_tile<NT>(st_dt, delta + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    if (z) prefetch_tile<NT>(st_z, z + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    prefetch_tile<NT>(st_B, Bg + t0 * N, N, npad, int(N), len, p.vec_bc);
    if (!kStateOnly) prefetch_tile<NT>(st_C, Cg + t0 * N, N, npad, int(N), len, p.vec_bc);
    cp_async_commit();
    next_resets = chunk_resets(p, b, ck);
  };
  prefetch(chunks.begin);

  for (int ck = chunks.begin; ck < chunks.end; ++ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    const uint32_t resets = next_resets;
    any_reset |= resets;
    cp_async_wait_all();
    __syncthreads();  // the staged chunk is visible; the previous chunk's stores are done
    convert_tile<NT>(st_u, cpb, [&](int r, int tt, float v) { s_u[tile_at(r, tt)] = v; });
    convert_tile<NT>(st_dt, cpb, [&](int r, int tt, float v) {
      const float dt = staged_dt(p, v, s_bias[r], tt < len && r < rows_valid);
      s_dt[tile_at(r, tt)] = dt;
      // The segment pass needs u only as dt u: formed here once per element instead of by
      // each of the G lanes of the channel (the same thread wrote s_u here just above:
      // identical index mapping).
      if constexpr (kStateOnly) s_u[tile_at(r, tt)] *= dt;
    });
    if (z) convert_tile<NT>(st_z, cpb, [&](int r, int tt, float v) { s_gate[tile_at(r, tt)] = silu_f(v); });
    convert_tile<NT>(st_B, npad, [&](int r, int tt, float v) { s_B[tt * npad + r] = v; });
    if (!kStateOnly) convert_tile<NT>(st_C, npad, [&](int r, int tt, float v) { s_C[tt * npad + r] = v; });
    __syncthreads();
    if (ck + 1 < chunks.end) prefetch(ck + 1);

    // Four steps at a time: dt and u of the four in one 16-byte load each, all shared-memory
    // loads before the one (16-byte) store of y, so that the compiler can overlap the loads
    // and exponentials of the four steps. Steps past len (zero padding up to a multiple of 4)
    // leave h unchanged: dt = u = B = C = 0. The variant with document starts (a uniform
    // branch per 4 steps) zeroes h before a starting step.
    auto four_steps = [&](int t4, auto has_starts) {
      [[maybe_unused]] float y[4];
      const float4 dt4 = *reinterpret_cast<const float4*>(s_dt + tile_at(c, t4));
      const float4 u4 = *reinterpret_cast<const float4*>(s_u + tile_at(c, t4));
      const float dt[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, uu[4] = {u4.x, u4.y, u4.z, u4.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (decltype(has_starts)::value) {
          if (resets >> (t4 + j) & 1u) {
#pragma unroll
            for (int k = 0; k < SPT; ++k) h[k] = 0.f;
          }
        }
        const float du = kStateOnly ? uu[j] : dt[j] * uu[j];
        float Bv[SPT];
        read_states<SPT>(s_B + (t4 + j) * npad + g * SPT, Bv);
#pragma unroll
        for (int k = 0; k < SPT; ++k) h[k] = fmaf(ex2(dt[j] * A2[k]), h[k], du * Bv[k]);
        if constexpr (kStateOnly) {
          dt_sum += dt[j];
        } else {
          float Cv[SPT];
          read_states<SPT>(s_C + (t4 + j) * npad + g * SPT, Cv);
          float y0 = 0.f, y1 = 0.f;
#pragma unroll
          for (int k = 0; k < SPT; k += 2) {
            y0 = fmaf(Cv[k], h[k], y0);
            y1 = fmaf(Cv[k + 1], h[k + 1], y1);
          }
          y[j] = y0 + y1;
        }
      }
      if constexpr (!kStateOnly) store_y4(s_u + tile_at(c, t4), y, u4, Dd, g, G);
    };
    for (int t4 = 0; t4 < len; t4 += 4)
      with_document_starts(resets >> t4 & 15u, [&](auto has_starts) { four_steps(t4, has_starts); });
    if constexpr (!kStateOnly) {
      if (p.ckpt && d < p.dim && (ck % kCkptChunks == kCkptChunks - 1 || ck + 1 == p.nchunks)) {
        float* cp = p.ckpt + ((int64_t(b) * p.dim + d) * p.nckpt + ck / kCkptChunks) * N;
#pragma unroll
        for (int k = 0; k < SPT; ++k)
          if (g * SPT + k < N) cp[g * SPT + k] = h[k];
      }
      __syncthreads();
      if (z)
        store_tile<NT>(out + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                       [&](int r, int tt) { return s_u[tile_at(r, tt)] * s_gate[tile_at(r, tt)]; });
      else
        store_tile<NT>(out + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                       [&](int r, int tt) { return s_u[tile_at(r, tt)]; });
    }
  }
  if (d >= p.dim) return;
#pragma unroll
  for (int k = 0; k < SPT; ++k) {
    const int n = g * SPT + k;
    if (n >= N) continue;
    if constexpr (kStateOnly) {
      p.seg_state[seg_index(p, b, seg, d, n)] = h[k];
      p.seg_decay[seg_index(p, b, seg, d, n)] = any_reset ? 0.f : ex2(A2[k] * dt_sum);
    } else if (seg == p.nseg - 1) {
      p.final_state[(int64_t(b) * p.dim + d) * N + n] = h[k];
    }
  }
}

// Backward segment pass: the dh carried out of segment seg = blockIdx.z + 1 (into the step
// before its first) when nothing comes in at its end, and its decay P (as in the forward's
// segment pass). Reverse over the segment: dh_t = C_t dy_t + carry, carry = a_t dh_t (a_t = 0
// at a document start), dy_t = dout_t silu(z_t). Reads delta, z, dout, C once (no u, B, no
// checkpoints); one exp2 per (b, d, t, n). Same block shape and staging as the forward.
template <class T, int SPT, int NT = block_threads(SPT)>
__global__ void __launch_bounds__(NT) scan_backward_carry_kernel(ScanParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int cpb = p.cpb, G = p.G, npad = p.npad;
  float* s_dy = smem;                      // [cpb][kChunk] (tile_at): dout, then dout silu(z)
  float* s_dt = s_dy + cpb * kChunk;       // [cpb][kChunk] (tile_at): softplus(delta + bias)
  float* s_C = s_dt + cpb * kChunk;        // [kChunk][npad]
  float* s_bias = s_C + kChunk * npad;     // [cpb], padded to a multiple of 4
  T* st_dout = reinterpret_cast<T*>(s_bias + ((cpb + 3) & ~3));  // raw staging
  T* st_dt = st_dout + cpb * kChunk;
  T* st_z = st_dt + cpb * kChunk;
  T* st_C = st_z + cpb * kChunk;

  const int b = blockIdx.y, d0 = blockIdx.x * cpb, seg = blockIdx.z + 1;
  const int c = threadIdx.x / G, g = threadIdx.x % G, d = d0 + c;
  const int rows_valid = min(cpb, p.dim - d0);
  const int64_t L = p.len, N = p.nstate, Dm = p.dim;
  const int64_t rowoff = int64_t(b) * L * Dm + d0;
  const T* delta = static_cast<const T*>(p.delta) + rowoff;
  const T* z = p.z ? static_cast<const T*>(p.z) + rowoff : nullptr;
  const T* dout = static_cast<const T*>(p.dout) + rowoff;
  const T* Cg = static_cast<const T*>(p.C) + int64_t(b) * L * N;
  const ChunkRange chunks = segment_chunks(p, seg);

  for (int i = threadIdx.x; i < cpb; i += NT) s_bias[i] = p.bias && i < rows_valid ? p.bias[d0 + i] : 0.f;
  float carry[SPT], A2[SPT];
#pragma unroll
  for (int k = 0; k < SPT; ++k) {
    const int n = g * SPT + k;
    A2[k] = d < p.dim && n < N ? p.A[int64_t(d) * N + n] * kLog2e : 0.f;
    carry[k] = 0.f;
  }
  float dt_sum = 0.f;
  uint32_t any_reset = 0u, next_resets = 0u;
  auto prefetch = [&](int ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    prefetch_tile<NT>(st_dout, dout + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    prefetch_tile<NT>(st_dt, delta + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    if (z) prefetch_tile<NT>(st_z, z + t0 * Dm, Dm, cpb, rows_valid, len, p.vec);
    prefetch_tile<NT>(st_C, Cg + t0 * N, N, npad, int(N), len, p.vec_bc);
    cp_async_commit();
    next_resets = chunk_resets(p, b, ck);
  };
  prefetch(chunks.end - 1);

  for (int ck = chunks.end - 1; ck >= chunks.begin; --ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    const uint32_t resets = next_resets;
    any_reset |= resets;
    cp_async_wait_all();
    __syncthreads();
    convert_tile<NT>(st_dout, cpb, [&](int r, int tt, float v) { s_dy[tile_at(r, tt)] = v; });
    convert_tile<NT>(st_dt, cpb, [&](int r, int tt, float v) {
      s_dt[tile_at(r, tt)] = staged_dt(p, v, s_bias[r], tt < len && r < rows_valid);
    });
    // The same thread wrote s_dy at this position just above (identical index mapping).
    if (z) convert_tile<NT>(st_z, cpb, [&](int r, int tt, float v) { s_dy[tile_at(r, tt)] *= silu_f(v); });
    convert_tile<NT>(st_C, npad, [&](int r, int tt, float v) { s_C[tt * npad + r] = v; });
    __syncthreads();
    if (ck > chunks.begin) prefetch(ck - 1);
    // Four steps at a time from the last group down, dt and dy of the four in one 16-byte load
    // each (as in the forward). Steps past len (zero padding up to a multiple of 4) leave the
    // carry unchanged: dt = dy = C = 0.
    with_document_starts(resets, [&](auto has_starts) {
      for (int t4 = (len - 1) & ~3; t4 >= 0; t4 -= 4) {
        const float4 dt4 = *reinterpret_cast<const float4*>(s_dt + tile_at(c, t4));
        const float4 dy4 = *reinterpret_cast<const float4*>(s_dy + tile_at(c, t4));
        const float dt[4] = {dt4.x, dt4.y, dt4.z, dt4.w}, dy[4] = {dy4.x, dy4.y, dy4.z, dy4.w};
#pragma unroll
        for (int j = 3; j >= 0; --j) {
          const bool starts = decltype(has_starts)::value && (resets >> (t4 + j) & 1u);
          float Cv[SPT];
          read_states<SPT>(s_C + (t4 + j) * npad + g * SPT, Cv);
#pragma unroll
          for (int k = 0; k < SPT; ++k) {
            const float a = starts ? 0.f : ex2(dt[j] * A2[k]);
            carry[k] = a * fmaf(Cv[k], dy[j], carry[k]);
          }
          dt_sum += dt[j];
        }
      }
    });
  }
  if (d >= p.dim) return;
#pragma unroll
  for (int k = 0; k < SPT; ++k) {
    const int n = g * SPT + k;
    if (n >= N) continue;
    p.seg_state[seg_index(p, b, seg, d, n)] = carry[k];
    p.seg_decay[seg_index(p, b, seg, d, n)] = any_reset ? 0.f : ex2(A2[k] * dt_sum);
  }
}

// Backward with recomputation, one block per (channel tile, b, segment), its chunks in reverse
// order, starting from the dh carried into the segment's end: the gradient of the final state
// composed with the (P, carry) of the later segments. For each chunk: its start state is the
// saved one at the start of its checkpoint interval, run forward over the interval's earlier
// chunks (staged again); stage u, dt, dy = dout silu(z) and dout silu'(z) (fp32) and B, C;
// pass 1 runs the recurrence from the chunk's start state and keeps the states at the
// sub-chunk starts (steps 8, 16, 24) in registers (the rerun of chunk ck - 1 for chunk ck saves
// them in a scratch buffer, so that chunk ck - 1 skips pass 1); then per sub-chunk of kSub = 8
// steps, last first:
//  (a) recompute the sub-chunk, storing every state in shared memory (lane-private columns)
//      and y (for dz);
//  (b) the block sums dC_t[n] = sum_c dy_t[c] h_t[c, n] over its channels;
//  (c) the reverse recurrence dh_t = C_t dy_t + a_{t+1} dh_{t+1} over the sub-chunk gives du,
//      ddelta and the running dA;
//  (d) the block sums dB_t[n] = sum_c dh_t[c, n] du_t[c] over its channels.
// The sums of (b) and (d) run over the channels in a fixed order, then over channel tiles
// through per-tile partials (deterministic) or float atomics. Exponentials per (b, d, t, n):
// 1 recompute, 1 reverse, 1/2 for the rerun of every other chunk and 3/8 for pass 1 of the
// chunks that rerun their predecessor: 2.875 at kCkptChunks = 2.
// Memory: reads u, delta, z, dout, B, C once (u, delta, B of the rerun chunks twice), writes
// du, ddelta, dz once, reads one saved state per (b, d, n) per chunk; writes and reads back
// 4 x 4 bytes per (b, d, n) per rerun chunk (scratch, L2-resident: 6.3 MB at B16 D1536 N16).
//
// A lane holds KC channels x SPT states ("slots" s = k SPT + j: channel k, state g SPT + j);
// the G lanes of a channel group cover the states.
// * KC = 1, SPT = 8 (ScanBackward::one_channel): G = 2 at d_state 16. (a) stores h_t in its slot
//   column, (b) reads the columns of all channels back (2 shared loads and an FMA per (channel,
//   state, step)), (c) overwrites each consumed state with dh_t du_t, which (d) reads back: 6
//   shared-memory accesses per (b, d, t, n).
// * KC = 2, SPT = 4 (ScanBackward::channel_pairs, d_state 9..16 only: G = 4): a lane holds the
//   same 8 slots as two channels c, c + 16 of one state group. The channel sums start in
//   registers (dy_c h_c + dy_c' h_c' per state: one FMA and a multiply per two slots), then a
//   transposed butterfly over the 8 channel groups of the warp (`warp_channel_sum4`: 4
//   shuffles) leaves one state's sum per lane, stored once per warp and step; (b) and (d) add
//   the 2 warps. (a) stores h_{t-1} (read by (c) only: kSub rows, no write-back). The sums
//   over states (y, dh B, q A) cover 4 lanes instead of 2 (`pair_state_sum`, transposed: 2
//   shuffles for the two channels). Counts and measurements: docs/SELECTIVE_SCAN.md,
//   "The channel-pair backward".

// The sum over the 4 lanes of a channel pair (lane bits 0, 1) of v0 (channel 0) and v1
// (channel 1): lane g ends with the sum of channel g & 1, in a fixed order.
__device__ __forceinline__ float pair_state_sum(float v0, float v1, int g) {
  constexpr unsigned kAll = 0xffffffffu;
  const bool odd = g & 1;
  const float s = (odd ? v1 : v0) + __shfl_xor_sync(kAll, odd ? v0 : v1, 1);
  return s + __shfl_xor_sync(kAll, s, 2);
}

// The sum of v[j] (state 4 g + j, g = lane & 3) over the 8 channel groups of the warp (lane
// bits 2, 3, 4), transposed: at the first level (lanes l, l ^ 4) each lane sends two values
// and keeps two, at the second (l ^ 8) sends one and keeps one, then a plain level (l ^ 16).
// The lane ends with the sum of state 4 g + 2 b2 + b3 (b2, b3: lane bits 2, 3), the same in
// lanes l and l ^ 16; a fixed order (deterministic).
__device__ __forceinline__ float warp_channel_sum4(const float (&v)[4], int lane) {
  constexpr unsigned kAll = 0xffffffffu;
  const bool b2 = lane & 4, b3 = lane & 8;
  const float s0 = (b2 ? v[2] : v[0]) + __shfl_xor_sync(kAll, b2 ? v[0] : v[2], 4);
  const float s1 = (b2 ? v[3] : v[1]) + __shfl_xor_sync(kAll, b2 ? v[1] : v[3], 4);
  const float s = (b3 ? s1 : s0) + __shfl_xor_sync(kAll, b3 ? s0 : s1, 8);
  return s + __shfl_xor_sync(kAll, s, 16);
}

template <class T, int SPT, int KC, int NT = block_threads(SPT * KC)>
__global__ void __launch_bounds__(NT, kBwdBlocksPerSm) scan_backward_kernel(ScanParams p) {
  static_assert(KC == 1 || (KC == 2 && SPT == 4 && NT == 64), "the channel-pair variant: 2 x 4 slots, G = 4, 2 warps");
  constexpr int S = KC * SPT;                        // slots per lane
  constexpr int kRowsH = KC == 1 ? kSub + 1 : kSub;  // states 0..kSub (KC = 1) or 0..kSub - 1 of a sub-chunk
  constexpr int kPitchH = NT + 1;  // row pitch of s_h (odd: conflict-free both ways)
  constexpr int kWarps = NT / 32;
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
  // The states of a sub-chunk, [S][kRowsH][kPitchH]: a static array of its own, so that
  // the compiler knows its stores do not alias the staged inputs and can hoist their loads.
  __shared__ float s_h[S * kRowsH * kPitchH];
  // KC = 2: each warp's channel sums (dC in (a), dB in (c)) per sub-chunk step, [kSub][kWarps][16].
  __shared__ float s_red[KC == 1 ? 1 : kSub * kWarps * 16];

  const int b = blockIdx.y, tile = blockIdx.x, d0 = tile * cpb, seg = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31;
  const int cg = tid / G, g = tid % G, ncg = NT / G;
  int ch[KC];  // the lane's channels in the tile: cg, cg + ncg
#pragma unroll
  for (int k = 0; k < KC; ++k) ch[k] = cg + k * ncg;
  // The channel whose du, d delta, dz, dD and d delta_bias this lane writes (lanes g < KC).
  const int kout = KC == 1 ? 0 : g & 1, oc = cg + kout * ncg;
  const bool writer = g < KC;
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
  const ChunkRange chunks = segment_chunks(p, seg);

  // Slot s = k SPT + j: channel d0 + ch[k], state g SPT + j; valid when both are in range.
  auto slot_d = [&](int s) { return d0 + ch[s / SPT]; };
  auto slot_n = [&](int s) { return g * SPT + s % SPT; };
  auto slot_ok = [&](int s) { return slot_d(s) < p.dim && slot_n(s) < N; };
  float A2[S], Af[S], dA[S], dhc[S];
#pragma unroll
  for (int s = 0; s < S; ++s) {
    const int d = slot_d(s), n = slot_n(s);
    const bool ok = slot_ok(s);
    const int64_t bd = int64_t(b) * p.dim + d;
    Af[s] = ok ? p.A[int64_t(d) * N + n] : 0.f;
    A2[s] = Af[s] * kLog2e;
    dA[s] = 0.f;
    dhc[s] = ok && p.dhl ? p.dhl[bd * N + n] : 0.f;
    if (ok)
      for (int sg = p.nseg - 1; sg > seg; --sg)
        dhc[s] = fmaf(p.seg_decay[seg_index(p, b, sg, d, n)], dhc[s], p.seg_state[seg_index(p, b, sg, d, n)]);
  }
  float Dd[KC];
#pragma unroll
  for (int k = 0; k < KC; ++k) Dd[k] = d0 + ch[k] < p.dim && p.D ? p.D[d0 + ch[k]] : 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;  // channel oc (writer lanes)
  for (int i = tid; i < cpb; i += NT) s_bias[i] = p.bias && i < rows_valid ? p.bias[d0 + i] : 0.f;
  __syncthreads();
  // This lane's slot s, state i of the sub-chunk.
  auto hslot = [&](int s, int i) -> float& { return s_h[(s * kRowsH + i) * kPitchH + tid]; };

  // The block's sums acc[i] of steps ts + i0 + i (i < 4, i0 + i < cnt) of row q of 2N (dC |
  // dB) to the per-tile partials or the atomic accumulator.
  auto write_sums = [&](int q, int64_t t0, int ts, int i0, int cnt, const float (&acc)[4]) {
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
  };
  // Sums over the block's channels of one quantity for the sub-chunk's steps [ts, ts + cnt):
  // dC (rows i + 1, weighted by dy) or dB (rows i). A work item is (state n, 4 consecutive
  // steps, half of the channels: even or odd); the two halves are neighbouring lanes and add
  // up with one shuffle, always in the same order. KC = 2: the warps' sums in s_red, added in
  // warp order.
  auto reduce_sub = [&](bool is_dc, int64_t t0, int ts, int cnt) {
    constexpr int groups = kSub / 4;
    if constexpr (KC == 2) {
      const int unit = tid, n = unit / groups, i0 = (unit % groups) * 4;
      if (unit >= int(N) * groups || i0 >= cnt) return;
      float acc[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        acc[i] = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w) acc[i] += s_red[((i0 + i) * kWarps + w) * 16 + n];
      }
      write_sums(is_dc ? n : int(N) + n, t0, ts, i0, cnt, acc);
      return;
    }
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
      write_sums(is_dc ? n : int(N) + n, t0, ts, i0, cnt, acc);
    }
  };
  // KC = 2: v[j] (state 4 g + j, summed over the lane's two channels) summed over the warp's
  // channels into s_red row i.
  auto store_warp_sums = [&](const float (&v)[4], int i) {
    const float s = warp_channel_sum4(v, lane);
    if (lane < 16) s_red[(i * kWarps + tid / 32) * 16 + g * 4 + ((lane >> 1) & 2) + ((lane >> 3) & 1)] = s;
  };

  // Stages what the recurrence reads: u, dt = softplus(delta + bias), B of the chunk at t0.
  auto stage_recurrence = [&](int64_t t0, int len) {
    load_tile<NT>(u + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                  [&](int r, int tt, float v, bool) { s_u[r * kPitch + tt] = from_f<T>(v); });
    load_tile<NT>(delta + t0 * Dm, Dm, cpb, rows_valid, len, p.vec,
                  [&](int r, int tt, float v, bool ok) { s_dt[r * kPitch + tt] = staged_dt(p, v, s_bias[r], ok); });
    load_tile<NT>(Bg + t0 * N, N, npad, int(N), len, p.vec_bc,
                  [&](int r, int tt, float v, bool) { s_B[tt * npad + r] = v; });
  };
  // Runs this lane's states h over the staged steps [ts, te); `resets` is the chunk's mask of
  // document starts (a start zeroes h before its step).
  auto advance = [&](float* h, int ts, int te, uint32_t resets) {
    with_document_starts(resets >> ts & ((1u << (te - ts)) - 1u), [&](auto has_starts) {
#pragma unroll 2
      for (int tt = ts; tt < te; ++tt) {
        const bool starts = decltype(has_starts)::value && (resets >> tt & 1u);
        float Bv[SPT];
        read_states<SPT>(s_B + tt * npad + g * SPT, Bv);
#pragma unroll
        for (int k = 0; k < KC; ++k) {
          const float dt = s_dt[ch[k] * kPitch + tt], du = dt * to_f(s_u[ch[k] * kPitch + tt]);
#pragma unroll
          for (int j = 0; j < SPT; ++j) {
            const int s = k * SPT + j;
            h[s] = fmaf(starts ? 0.f : ex2(dt * A2[s]), h[s], du * Bv[j]);
          }
        }
      }
    });
  };
  // This lane's state at step 8 j of the last rerun chunk (slot j of 4): kept in a scratch
  // buffer of its own (coalesced, [block][j][s][lane]) until that chunk is processed next.
  const int64_t block_id = (int64_t(b) * p.nseg + seg) * p.ntiles + tile;
  auto sub_state = [&](int j, int s) -> float& {
    return p.sub_states[((block_id * (kChunk / kSub) + j) * S + s) * NT + tid];
  };
  // The state at the start of chunk ck into h: the saved state (or the initial one) at the
  // start of its checkpoint interval, then the interval's earlier chunks recomputed (full
  // chunks: only the last chunk can be partial). The rerun of chunk ck - 1 keeps its states at
  // the sub-chunk starts: they replace pass 1 when chunk ck - 1 is processed next.
  auto chunk_start_state = [&](int ck, float* h) {
    const int c0 = ck - ck % kCkptChunks;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t bd = int64_t(b) * p.dim + slot_d(s);
      float v = 0.f;
      if (slot_ok(s)) {
        if (c0 > 0) v = p.ckpt[(bd * p.nckpt + c0 / kCkptChunks - 1) * N + slot_n(s)];
        else if (p.h0) v = p.h0[bd * N + slot_n(s)];
      }
      h[s] = v;
    }
    for (int cr = c0; cr < ck; ++cr) {
      stage_recurrence(int64_t(cr) * kChunk, kChunk);
      const uint32_t resets = chunk_resets(p, b, cr);
      __syncthreads();
      for (int j = 0; j < kChunk / kSub; ++j) {
        if (cr + 1 == ck) {
#pragma unroll
          for (int s = 0; s < S; ++s) sub_state(j, s) = h[s];
        }
        advance(h, j * kSub, (j + 1) * kSub, resets);
      }
      __syncthreads();  // the staging area is reused
    }
  };

  for (int ck = chunks.end - 1; ck >= chunks.begin; --ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    float h0[S], hb[3][S];
    // Chunk ck + 1 (of this segment) reran this (full) chunk and kept its sub-chunk start states.
    const bool rerun_kept = ck + 1 < chunks.end && (ck + 1) % kCkptChunks != 0;
    if (rerun_kept) {
#pragma unroll
      for (int s = 0; s < S; ++s) {
        h0[s] = sub_state(0, s);
#pragma unroll
        for (int j = 0; j < 3; ++j) hb[j][s] = sub_state(j + 1, s);
      }
    } else {
      chunk_start_state(ck, h0);
    }
    stage_recurrence(t0, len);
    const uint32_t resets = chunk_resets(p, b, ck);
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
      float h[S];
#pragma unroll
      for (int s = 0; s < S; ++s) h[s] = h0[s];
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        if (j + 1 < nsub) advance(h, j * kSub, (j + 1) * kSub, resets);
#pragma unroll
        for (int s = 0; s < S; ++s) hb[j][s] = h[s];
      }
    }

    for (int j = nsub - 1; j >= 0; --j) {
      const int ts = j * kSub, te = min(len, ts + kSub), cnt = te - ts;
      const uint32_t sub_starts = resets >> ts & ((1u << cnt) - 1u);
      // (a) Recompute the sub-chunk's states; y for dz; KC = 2: the warps' dC sums.
      with_document_starts(sub_starts, [&](auto has_starts) {
        float h[S];
#pragma unroll
        for (int s = 0; s < S; ++s) {
          h[s] = j == 0 ? h0[s] : j == 1 ? hb[0][s] : j == 2 ? hb[1][s] : hb[2][s];
          if constexpr (KC == 1) hslot(s, 0) = h[s];
        }
#pragma unroll 2
        for (int tt = ts; tt < te; ++tt) {
          const bool starts = decltype(has_starts)::value && (resets >> tt & 1u);
          float Bv[SPT], Cv[SPT], uu[KC], y[KC];
          read_states<SPT>(s_B + tt * npad + g * SPT, Bv);
          read_states<SPT>(s_C + tt * npad + g * SPT, Cv);
#pragma unroll
          for (int k = 0; k < KC; ++k) {
            const float dt = s_dt[ch[k] * kPitch + tt];
            uu[k] = to_f(s_u[ch[k] * kPitch + tt]);
            const float du = dt * uu[k];
            float y0 = 0.f, y1 = 0.f;
#pragma unroll
            for (int jj = 0; jj < SPT; jj += 2) {
              const int s = k * SPT + jj;
              if constexpr (KC == 2) {
                hslot(s, tt - ts) = h[s];
                hslot(s + 1, tt - ts) = h[s + 1];
              }
              h[s] = fmaf(starts ? 0.f : ex2(dt * A2[s]), h[s], du * Bv[jj]);
              h[s + 1] = fmaf(starts ? 0.f : ex2(dt * A2[s + 1]), h[s + 1], du * Bv[jj + 1]);
              if constexpr (KC == 1) {
                hslot(s, tt - ts + 1) = h[s];
                hslot(s + 1, tt - ts + 1) = h[s + 1];
              }
              y0 = fmaf(Cv[jj], h[s], y0);
              y1 = fmaf(Cv[jj + 1], h[s + 1], y1);
            }
            y[k] = y0 + y1;
          }
          if constexpr (KC == 1) {
            const float ys = group_sum(y[0], G);
            if (z && writer) s_dz[oc * kPitch + tt] *= fmaf(Dd[0], uu[0], ys);
          } else {
            const float ys = pair_state_sum(y[0], y[1], g);
            if (z && writer) s_dz[oc * kPitch + tt] *= fmaf(kout ? Dd[1] : Dd[0], kout ? uu[1] : uu[0], ys);
            const float dy0 = s_dy[ch[0] * kPitch + tt], dy1 = s_dy[ch[1] * kPitch + tt];
            float dc[4];
#pragma unroll
            for (int jj = 0; jj < 4; ++jj) dc[jj] = fmaf(dy0, h[jj], dy1 * h[SPT + jj]);
            store_warp_sums(dc, tt - ts);
          }
        }
      });
      __syncthreads();
      // (b) dC over the block's channels.
      reduce_sub(true, t0, ts, cnt);
      __syncthreads();
      // (c) Reverse over the sub-chunk. At a document start the decay is 0: nothing flows to
      // the step before, and the terms of exp(dt A) h_{t-1} vanish.
      with_document_starts(sub_starts, [&](auto has_starts) {
#pragma unroll 2
        for (int tt = te - 1; tt >= ts; --tt) {
          const bool starts = decltype(has_starts)::value && (resets >> tt & 1u);
          float Bv[SPT], Cv[SPT], dt[KC], uu[KC], dy[KC], sum_dhB[KC], sum_q[KC];
          [[maybe_unused]] float db[SPT];
          read_states<SPT>(s_B + tt * npad + g * SPT, Bv);
          read_states<SPT>(s_C + tt * npad + g * SPT, Cv);
#pragma unroll
          for (int k = 0; k < KC; ++k) {
            dt[k] = s_dt[ch[k] * kPitch + tt];
            uu[k] = to_f(s_u[ch[k] * kPitch + tt]);
            dy[k] = s_dy[ch[k] * kPitch + tt];
            const float du = dt[k] * uu[k];
            sum_dhB[k] = 0.f;
            sum_q[k] = 0.f;
#pragma unroll
            for (int jj = 0; jj < SPT; ++jj) {
              const int s = k * SPT + jj;
              const float a = starts ? 0.f : ex2(dt[k] * A2[s]);
              float& slot = hslot(s, tt - ts);
              const float hp = slot;
              const float dh = fmaf(Cv[jj], dy[k], dhc[s]);
              const float q = dh * (a * hp);
              dA[s] = fmaf(q, dt[k], dA[s]);
              sum_q[k] = fmaf(q, Af[s], sum_q[k]);
              sum_dhB[k] = fmaf(dh, Bv[jj], sum_dhB[k]);
              if constexpr (KC == 1) slot = dh * du;
              else db[jj] = k == 0 ? dh * du : fmaf(dh, du, db[jj]);
              dhc[s] = a * dh;
            }
          }
          float sdhB, sq, dto, uo, dyo, Do;
          if constexpr (KC == 1) {
            sdhB = group_sum(sum_dhB[0], G);
            sq = group_sum(sum_q[0], G);
            dto = dt[0], uo = uu[0], dyo = dy[0], Do = Dd[0];
          } else {
            sdhB = pair_state_sum(sum_dhB[0], sum_dhB[1], g);
            sq = pair_state_sum(sum_q[0], sum_q[1], g);
            dto = kout ? dt[1] : dt[0], uo = kout ? uu[1] : uu[0], dyo = kout ? dy[1] : dy[0];
            Do = kout ? Dd[1] : Dd[0];
            store_warp_sums(db, tt - ts);
          }
          if (writer) {
            float ddt = fmaf(sdhB, uo, sq);
            // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x))
            if (p.softplus) ddt *= softplus_grad_f(dto);
            s_u[oc * kPitch + tt] = from_f<T>(fmaf(sdhB, dto, Do * dyo));
            s_dt[oc * kPitch + tt] = ddt;
            dD_acc = fmaf(dyo, uo, dD_acc);
            dbias_acc += ddt;
          }
        }
      });
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

#pragma unroll
  for (int s = 0; s < S; ++s) {
    if (!slot_ok(s)) continue;
    const int d = slot_d(s), n = slot_n(s);
    p.dA_part[((int64_t(b) * p.nseg + seg) * p.dim + d) * N + n] = dA[s];
    if (p.dh0 && seg == 0) p.dh0[(int64_t(b) * p.dim + d) * N + n] = dhc[s];
  }
  if (writer && d0 + oc < p.dim) {
    const int64_t bsd = (int64_t(b) * p.nseg + seg) * p.dim + d0 + oc;  // this (b, segment, d)'s partials
    p.dD_part[bsd] = dD_acc;
    p.dbias_part[bsd] = dbias_acc;
  }
}

// Document starts: bit tt of masks[b][ck] is set when step t = 32 ck + tt (0 < t < len)
// begins a new document (seq_idx[b][t] != seq_idx[b][t - 1]). One warp per (b, chunk).
__global__ void document_starts_kernel(const int32_t* seq_idx, uint32_t* masks, int64_t batch, int64_t len,
                                       int64_t nchunks) {
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (warp >= batch * nchunks) return;
  const int64_t b = warp / nchunks, t = (warp % nchunks) * kChunk + lane;
  const int32_t* row = seq_idx + b * len;
  const bool starts = t > 0 && t < len && row[t] != row[t - 1];
  const uint32_t mask = __ballot_sync(0xffffffffu, starts);
  if (lane == 0) masks[warp] = mask;
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

// ---- host side -----------------------------------------------------------------------------

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
  p.nseg = 1;
  p.seg_chunks = p.nchunks;
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

// The document-start masks of seq_idx, (batch, nchunks), or an undefined tensor without it.
Tensor document_starts(const ScanArgs& a, ScanParams& p) {
  if (!a.seq_idx.defined()) return Tensor();
  Tensor masks = Tensor::empty({p.batch, p.nchunks}, DType::i32, a.u.device());
  const int64_t threads = int64_t(p.batch) * p.nchunks * 32;
  document_starts_kernel<<<unsigned((threads + 255) / 256), 256, 0, coil::cuda::compute_stream()>>>(
      a.seq_idx.data<int32_t>(), static_cast<uint32_t*>(masks.raw()), p.batch, p.len, p.nchunks);
  COIL_CUDA_CHECK_LAUNCH("selective_scan/document_starts", "seq_idx {}", describe(a.seq_idx));
  p.resets = static_cast<const uint32_t*>(masks.raw());
  return masks;
}

// Cuts time into segments (whole checkpoint intervals) for `kernel`, whose blocks of `threads`
// take `smem` bytes. Where the (tiles x batch) blocks alone fill a quarter of a wave (the blocks
// the GPU keeps resident at once) or more, as many segments as fit beside them in one wave,
// none when they fill it (B16 D1536 L2048); below a quarter (small batch x long length), as
// many as make `waves` waves (scan_waves(), kernels/selective_scan.h): there the whole waves
// pay more than the segments' recomputation costs, and near a full wave they do not
// (measured, docs/SELECTIVE_SCAN.md).
template <class Kernel>
void choose_segments(ScanParams& p, Kernel kernel, int threads, size_t smem, float waves) {
  int per_sm = 0;
  COIL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
  const double wave = double(std::max(per_sm, 1)) * coil::cuda::multiprocessor_count();
  const int64_t base = int64_t(p.ntiles) * p.batch;
  const double target = double(base) * 4 < wave ? wave * waves : wave;
  const int intervals = (p.nchunks + kCkptChunks - 1) / kCkptChunks;
  const int want = int(std::clamp<int64_t>(int64_t(target) / base, 1, std::min(intervals, 65535)));
  p.seg_chunks = (intervals + want - 1) / want * kCkptChunks;
  p.nseg = (p.nchunks + p.seg_chunks - 1) / p.seg_chunks;
}

// The (batch, nseg, dim, state) pair of segment tensors (P and E, or P and the carry).
struct SegmentState {
  Tensor decay, state;
  SegmentState(ScanParams& p, Device dev) {
    if (p.nseg == 1) return;
    decay = Tensor::empty({p.batch, p.nseg, p.dim, p.nstate}, DType::f32, dev);
    state = Tensor::empty({p.batch, p.nseg, p.dim, p.nstate}, DType::f32, dev);
    p.seg_decay = decay.data<float>();
    p.seg_state = state.data<float>();
  }
};

size_t forward_smem(const ScanParams& p, size_t elem) {
  return sizeof(float) * (size_t(3) * p.cpb * kChunk + size_t(2) * kChunk * p.npad + ((p.cpb + 3) & ~3)) +
         elem * kChunk * (size_t(3) * p.cpb + size_t(2) * p.npad);
}

template <class T>
void launch_forward(const ScanArgs& a, const ScanResult& r) {
  constexpr int NT = block_threads(kFwdSpt);
  ScanParams p = make_params(a, kFwdSpt);
  p.out = r.out.raw();
  p.final_state = r.final_state.data<float>();
  p.ckpt = r.checkpoints.defined() ? r.checkpoints.data<float>() : nullptr;
  const Tensor masks = document_starts(a, p);
  const size_t smem = forward_smem(p, sizeof(T));
  auto* main_kernel = scan_forward_kernel<T, kFwdSpt, false>;
  auto* segment_kernel = scan_forward_kernel<T, kFwdSpt, true>;
  for (auto* k : {main_kernel, segment_kernel})
    COIL_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  choose_segments(p, main_kernel, NT, smem, scan_waves().forward);
  const SegmentState segments(p, a.u.device());
  cudaStream_t stream = coil::cuda::compute_stream();
  if (p.nseg > 1) {
    segment_kernel<<<dim3(unsigned(p.ntiles), unsigned(p.batch), unsigned(p.nseg - 1)), NT, smem, stream>>>(p);
    COIL_CUDA_CHECK_LAUNCH("selective_scan_forward/segments", "u {}, segments {} of {} chunks", describe(a.u), p.nseg,
                           p.seg_chunks);
  }
  const dim3 grid(unsigned(p.ntiles), unsigned(p.batch), unsigned(p.nseg));
  main_kernel<<<grid, NT, smem, stream>>>(p);
  COIL_CUDA_CHECK_LAUNCH("selective_scan_forward", "u {}, A {}, grid {}x{}x{}, smem {}", describe(a.u), describe(a.A),
                         grid.x, grid.y, grid.z, smem);
}

// The backward's dh carried into each segment's end: the carry kernel (forward's block shape)
// over segments 1 .. nseg - 1 of the backward's segmentation.
template <class T>
void launch_backward_carry(const ScanArgs& a, const ScanParams& bwd, const Tensor& grad_out) {
  constexpr int NT = block_threads(kFwdSpt);
  ScanParams p = make_params(a, kFwdSpt);
  if (!aligned16(grad_out.raw())) p.vec = false;
  p.dout = grad_out.raw();
  p.resets = bwd.resets;
  p.nseg = bwd.nseg;
  p.seg_chunks = bwd.seg_chunks;
  p.seg_decay = bwd.seg_decay;
  p.seg_state = bwd.seg_state;
  const size_t smem = sizeof(float) * (size_t(2) * p.cpb * kChunk + size_t(kChunk) * p.npad + ((p.cpb + 3) & ~3)) +
                      sizeof(T) * kChunk * (size_t(3) * p.cpb + size_t(p.npad));
  auto* kernel = scan_backward_carry_kernel<T, kFwdSpt>;
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<dim3(unsigned(p.ntiles), unsigned(p.batch), unsigned(p.nseg - 1)), NT, smem,
           coil::cuda::compute_stream()>>>(p);
  COIL_CUDA_CHECK_LAUNCH("selective_scan_backward/segments", "u {}, segments {} of {} chunks", describe(a.u), p.nseg,
                         p.seg_chunks);
}

}  // namespace

void selective_scan_forward(const ScanArgs& a, const ScanResult& r) {
  check_sizes("selective_scan_forward", a);
  if (a.u.dtype() == DType::bf16) launch_forward<bf16_t>(a, r);
  else launch_forward<float>(a, r);
}

void selective_scan_backward(const ScanArgs& a, const ScanResult& saved, const Tensor& grad_out,
                             const Tensor& grad_final_state, const ScanGrads& grads, bool deterministic) {
  const char* op = "selective_scan_backward";
  check_sizes(op, a);
  constexpr int NT = block_threads(kBwdSpt);
  // The channel-pair kernel where its lanes fit d_state (G = 4 lanes of 4 states: 9..16).
  const bool pairs = scan_backward_kind() == ScanBackward::channel_pairs && make_params(a, kPairSpt).G == 4;
  ScanParams p = make_params(a, pairs ? kPairSpt : kBwdSpt);
  if (!aligned16(grad_out.raw())) p.vec = false;
  for (const Tensor* t : {&grads.du, &grads.ddelta, &grads.dz})
    if (t->defined() && !aligned16(t->raw())) p.vec = false;
  const Device dev = a.u.device();
  const bool bf = a.u.dtype() == DType::bf16;
  const Tensor masks = document_starts(a, p);
  const size_t smem = dtype_size(a.u.dtype()) * p.cpb * kPitch +
                      sizeof(float) * (size_t(3) * p.cpb * kPitch + size_t(2) * kChunk * p.npad + p.cpb);
  auto* kernel = pairs ? (bf ? scan_backward_kernel<bf16_t, kPairSpt, kPairChannels>
                             : scan_backward_kernel<float, kPairSpt, kPairChannels>)
                       : (bf ? scan_backward_kernel<bf16_t, kBwdSpt, 1> : scan_backward_kernel<float, kBwdSpt, 1>);
  COIL_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  choose_segments(p, kernel, NT, smem, scan_waves().backward);
  const SegmentState segments(p, dev);

  const int64_t B = p.batch, Dm = p.dim, N = p.nstate, L = p.len, S = p.nseg;
  p.dout = grad_out.raw();
  p.dhl = grad_final_state.defined() ? grad_final_state.data<float>() : nullptr;
  p.ckpt = saved.checkpoints.data<float>();
  p.du = grads.du.raw();
  p.ddelta = grads.ddelta.raw();
  p.dz = grads.dz.defined() ? grads.dz.raw() : nullptr;
  p.dh0 = grads.dinitial_state.defined() ? grads.dinitial_state.data<float>() : nullptr;
  Tensor dA_part = Tensor::empty({B, S, Dm, N}, DType::f32, dev);
  Tensor dD_part = Tensor::empty({B, S, Dm}, DType::f32, dev);
  Tensor dbias_part = Tensor::empty({B, S, Dm}, DType::f32, dev);
  p.dA_part = dA_part.data<float>();
  p.dD_part = dD_part.data<float>();
  p.dbias_part = dbias_part.data<float>();
  Tensor sub_states = Tensor::empty({B * S * p.ntiles * (kChunk / kSub) * kBwdSpt * NT}, DType::f32, dev);
  p.sub_states = sub_states.data<float>();
  p.atomic_dbc = !deterministic;
  Tensor dbc = Tensor::empty({B, deterministic ? int64_t(p.ntiles) : 1, 2 * N, L}, DType::f32, dev);
  p.dBC = dbc.data<float>();
  cudaStream_t stream = coil::cuda::compute_stream();
  if (!deterministic) COIL_CUDA_CHECK(cudaMemsetAsync(p.dBC, 0, dbc.nbytes(), stream));

  if (p.nseg > 1) {
    if (bf) launch_backward_carry<bf16_t>(a, p, grad_out);
    else launch_backward_carry<float>(a, p, grad_out);
  }
  const dim3 grid(unsigned(p.ntiles), unsigned(p.batch), unsigned(p.nseg));
  kernel<<<grid, NT, smem, stream>>>(p);
  COIL_CUDA_CHECK_LAUNCH("selective_scan_backward", "u {}, A {}, grid {}x{}x{}, smem {}", describe(a.u), describe(a.A),
                         grid.x, grid.y, grid.z, smem);

  // dB, dC: sum the tiles (or just convert the atomic accumulator) into (batch, state, length).
  {
    const int64_t total = B * 2 * N * L;
    const int blocks = int(std::min<int64_t>((total + 255) / 256, 65535));
    const int64_t ntiles = deterministic ? p.ntiles : 1;
    if (bf)
      reduce_dbc_kernel<bf16_t><<<blocks, 256, 0, stream>>>(p.dBC, static_cast<bf16_t*>(grads.dB.raw()),
                                                           static_cast<bf16_t*>(grads.dC.raw()), B, ntiles, N, L);
    else
      reduce_dbc_kernel<float><<<blocks, 256, 0, stream>>>(p.dBC, grads.dB.data<float>(), grads.dC.data<float>(), B,
                                                          ntiles, N, L);
    COIL_CUDA_CHECK_LAUNCH("selective_scan_backward/reduce_dbc", "batch {}, tiles {}, state {}, length {}", B, ntiles, N, L);
  }
  // dA, dD, d delta_bias: sum the (batch, segment) partials in a fixed order.
  auto sum_parts = [&](const Tensor& part, const Tensor& out, int64_t m) {
    const int blocks = int(std::min<int64_t>((m + 255) / 256, 4096));
    sum_leading_kernel<<<blocks, 256, 0, stream>>>(part.data<float>(), out.data<float>(), B * S, m);
    COIL_CUDA_CHECK_LAUNCH("selective_scan_backward/sum_parts", "parts {}", describe(part));
  };
  sum_parts(dA_part, grads.dA, Dm * N);
  if (grads.dD.defined()) sum_parts(dD_part, grads.dD, Dm);
  if (grads.ddelta_bias.defined()) sum_parts(dbias_part, grads.ddelta_bias, Dm);
}

}  // namespace coil::kernels::cuda
