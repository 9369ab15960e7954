// The fused selective scan on CUDA. Design notes: docs/SELECTIVE_SCAN.md.
//
// Work split (forward and backward alike): a thread block owns one batch row b and a tile of
// consecutive channels; inside it, G = 1, 2, 4 or 8 neighbouring lanes share one channel and
// each lane keeps kSpt = 8 of the channel's states in registers (d_state <= 8 G, padded states
// have A = B = C = 0). Time runs in chunks of kChunk = 64 steps: the block stages the chunk's
// inputs in shared memory (coalesced 16-byte loads along time, converted to fp32, softplus
// applied once per element), then every lane runs the recurrence over the chunk sequentially,
// then the block writes the chunk's outputs with coalesced stores. B and C of the chunk are
// staged as [t][state] so that a lane reads its 8 values with two 16-byte broadcasts.
#include <cuda_bf16.h>

#include <cstdint>

#include "core/cuda.h"
#include "kernels/selective_scan.h"

namespace coil::kernels::cuda {
namespace {

using bf16_t = __nv_bfloat16;

constexpr int kChunk = int(kScanChunk);  // time steps per chunk (checkpoint interval)
constexpr int kPitch = kChunk + 1;       // shared row pitch (odd: no bank conflicts across rows)
constexpr int kSpt = 8;                  // states per lane
constexpr int kSub = 16;                 // backward sub-chunk (states kept in shared memory)
constexpr int kFwdThreads = 128;
constexpr int kBwdThreads = 64;
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
__device__ __forceinline__ float softplus_f(float x) { return x > 20.f ? x : log1pf(__expf(x)); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.f / (1.f + __expf(-x)); }

// Stages rows [0, rows) x time [0, kChunk) of a (rows, ld) row-major array starting at g into
// shared memory through st(r, tt, value, valid); positions past rows_valid or len get value 0
// and valid = false. 16-byte loads along time when vec.
template <int NT, class T, class Store>
__device__ __forceinline__ void load_tile(const T* g, int64_t ld, int rows, int rows_valid, int len, bool vec,
                                          Store st) {
  if (vec) {
    constexpr int V = Pack<T>::n, per_row = kChunk / V;
    for (int i = threadIdx.x; i < rows * per_row; i += NT) {
      const int r = i / per_row, tt = (i % per_row) * V;
      if (r < rows_valid && tt < len) {
        Pack<T> p = *reinterpret_cast<const Pack<T>*>(g + r * ld + tt);
#pragma unroll
        for (int j = 0; j < V; ++j) st(r, tt + j, to_f(p.v[j]), true);
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) st(r, tt + j, 0.f, false);
      }
    }
  } else {
    for (int i = threadIdx.x; i < rows * kChunk; i += NT) {
      const int r = i / kChunk, tt = i % kChunk;
      const bool ok = r < rows_valid && tt < len;
      st(r, tt, ok ? to_f(g[r * ld + tt]) : 0.f, ok);
    }
  }
}

// Writes rows x len of a tile back: g[r * ld + tt] = f(r, tt) (fp32 converted to T).
template <int NT, class T, class F>
__device__ __forceinline__ void store_tile(T* g, int64_t ld, int rows_valid, int len, bool vec, F f) {
  if (vec) {
    constexpr int V = Pack<T>::n, per_row = kChunk / V;
    for (int i = threadIdx.x; i < rows_valid * per_row; i += NT) {
      const int r = i / per_row, tt = (i % per_row) * V;
      if (tt < len) {
        Pack<T> p;
#pragma unroll
        for (int j = 0; j < V; ++j) p.v[j] = from_f<T>(f(r, tt + j));
        *reinterpret_cast<Pack<T>*>(g + r * ld + tt) = p;
      }
    }
  } else {
    for (int i = threadIdx.x; i < rows_valid * kChunk; i += NT) {
      const int r = i / kChunk, tt = i % kChunk;
      if (tt < len) g[r * ld + tt] = from_f<T>(f(r, tt));
    }
  }
}

// Same as load_tile but reads (rows, ld) and applies a per-element map (for z and dout).
template <class T>
__device__ __forceinline__ float ld_f(const T* p) { return to_f(*p); }

struct ScanParams {
  const void *u, *delta, *z, *B, *C, *dout;
  const float *A, *D, *bias, *h0, *dhl;
  void *out, *du, *ddelta, *dz;
  float *final_state, *ckpt, *dA_part, *dD_part, *dbias_part, *dh0, *dBC;
  int batch, dim, len, nstate, G, npad, cpb, nchunks, ntiles;
  bool softplus, vec, atomic_dbc;
};

__device__ __forceinline__ void read8(const float* p, float* v) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

// Sum over the G lanes of a channel (neighbouring lanes).
__device__ __forceinline__ float group_sum(float v, int G) {
  for (int o = 1; o < G; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Forward. Per element of (b, d, t): reads u, delta, z once, writes out once; per (b, t): reads
// B, C once per channel tile; per chunk writes the 4-byte state of each (b, d, n) when saving.
// Exponentials: one ex2 per (b, d, t, n), plus softplus and silu per (b, d, t).
template <class T>
__global__ void __launch_bounds__(kFwdThreads) scan_forward_kernel(ScanParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int cpb = p.cpb, G = p.G, npad = p.npad;
  float* s_u = smem;                       // [cpb][kPitch]: u, then y
  float* s_dt = s_u + cpb * kPitch;        // [cpb][kPitch]: softplus(delta + bias)
  float* s_B = s_dt + cpb * kPitch;        // [kChunk][npad]
  float* s_C = s_B + kChunk * npad;        // [kChunk][npad]

  const int b = blockIdx.y, d0 = blockIdx.x * cpb;
  const int c = threadIdx.x / G, g = threadIdx.x % G, d = d0 + c;
  const int rows_valid = min(cpb, p.dim - d0);
  const int64_t L = p.len, N = p.nstate;
  const T* u = static_cast<const T*>(p.u) + (int64_t(b) * p.dim + d0) * L;
  const T* delta = static_cast<const T*>(p.delta) + (int64_t(b) * p.dim + d0) * L;
  const T* Bg = static_cast<const T*>(p.B) + int64_t(b) * N * L;
  const T* Cg = static_cast<const T*>(p.C) + int64_t(b) * N * L;
  const T* z = p.z ? static_cast<const T*>(p.z) + (int64_t(b) * p.dim + d0) * L : nullptr;
  T* out = static_cast<T*>(p.out) + (int64_t(b) * p.dim + d0) * L;

  float h[kSpt], A2[kSpt];
#pragma unroll
  for (int k = 0; k < kSpt; ++k) {
    const int n = g * kSpt + k;
    const bool ok = d < p.dim && n < N;
    A2[k] = ok ? p.A[int64_t(d) * N + n] * kLog2e : 0.f;
    h[k] = ok && p.h0 ? p.h0[(int64_t(b) * p.dim + d) * N + n] : 0.f;
  }
  const float Dd = d < p.dim && p.D ? p.D[d] : 0.f;

  for (int ck = 0; ck < p.nchunks; ++ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    load_tile<kFwdThreads>(u + t0, L, cpb, rows_valid, len, p.vec,
                           [&](int r, int tt, float v, bool) { s_u[r * kPitch + tt] = v; });
    load_tile<kFwdThreads>(delta + t0, L, cpb, rows_valid, len, p.vec, [&](int r, int tt, float v, bool ok) {
      if (ok) {
        v += p.bias ? p.bias[d0 + r] : 0.f;
        if (p.softplus) v = softplus_f(v);
      }
      s_dt[r * kPitch + tt] = v;
    });
    load_tile<kFwdThreads>(Bg + t0, L, npad, int(N), len, p.vec,
                           [&](int r, int tt, float v, bool) { s_B[tt * npad + r] = v; });
    load_tile<kFwdThreads>(Cg + t0, L, npad, int(N), len, p.vec,
                           [&](int r, int tt, float v, bool) { s_C[tt * npad + r] = v; });
    __syncthreads();

#pragma unroll 2
    for (int tt = 0; tt < len; ++tt) {
      const float dt = s_dt[c * kPitch + tt], uu = s_u[c * kPitch + tt], du = dt * uu;
      float Bv[kSpt], Cv[kSpt];
      read8(s_B + tt * npad + g * kSpt, Bv);
      read8(s_C + tt * npad + g * kSpt, Cv);
      float y0 = 0.f, y1 = 0.f;
#pragma unroll
      for (int k = 0; k < kSpt; k += 2) {
        h[k] = fmaf(ex2(dt * A2[k]), h[k], du * Bv[k]);
        h[k + 1] = fmaf(ex2(dt * A2[k + 1]), h[k + 1], du * Bv[k + 1]);
        y0 = fmaf(Cv[k], h[k], y0);
        y1 = fmaf(Cv[k + 1], h[k + 1], y1);
      }
      const float y = group_sum(y0 + y1, G);
      if (g == 0) s_u[c * kPitch + tt] = fmaf(Dd, uu, y);
    }
    if (p.ckpt && d < p.dim) {
      float* cp = p.ckpt + ((int64_t(b) * p.dim + d) * p.nchunks + ck) * N;
#pragma unroll
      for (int k = 0; k < kSpt; ++k)
        if (g * kSpt + k < N) cp[g * kSpt + k] = h[k];
    }
    __syncthreads();
    if (z) {
      store_tile<kFwdThreads>(out + t0, L, rows_valid, len, p.vec, [&](int r, int tt) {
        const float zv = to_f(z[r * L + t0 + tt]);
        return s_u[r * kPitch + tt] * zv * sigmoid_f(zv);
      });
    } else {
      store_tile<kFwdThreads>(out + t0, L, rows_valid, len, p.vec,
                              [&](int r, int tt) { return s_u[r * kPitch + tt]; });
    }
    __syncthreads();
  }
  if (d < p.dim) {
#pragma unroll
    for (int k = 0; k < kSpt; ++k)
      if (g * kSpt + k < N) p.final_state[(int64_t(b) * p.dim + d) * N + g * kSpt + k] = h[k];
  }
}

// Sums v[0..7] over the lanes of a warp that hold the same state slots of different channels
// (lanes that differ in the bits >= G), halving the vector at each of the first three levels.
// Afterwards this lane holds the channel sums of slots base + i, i < cnt, and `writer` says
// whether it is the one lane of its duplicates that should store them.
__device__ __forceinline__ void channel_reduce(float* v, int G, int lane, int& base, int& cnt, bool& writer) {
  base = 0;
  cnt = kSpt;
#pragma unroll
  for (int l = 0; l < 5; ++l) {
    const int o = 16 >> l;
    if (o < G) break;
    if (l < 3) {
      const int half = kSpt >> (l + 1);
      const bool upper = lane & o;
#pragma unroll
      for (int i = 0; i < half; ++i) {
        const float send = upper ? v[i] : v[i + half];
        const float keep = upper ? v[i + half] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
      }
      if (upper) base += half;
      cnt = half;
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
    }
  }
  const int dup_mask = 3 & ~(G - 1);
  writer = (lane & dup_mask) == 0;
}

// Backward with recomputation, one block per (channel tile, b), chunks in reverse order. For
// each chunk: stage u, dt, dy = dout silu(z) and dout silu'(z) (fp32) and B, C; pass 1 runs
// the recurrence from the saved chunk-start state and keeps the states at the sub-chunk
// starts (steps 16, 32, 48) in registers; then per sub-chunk, last first: recompute its 16
// steps storing each state h_{t-1} in shared memory (lane-private columns), with y (for dz)
// and dC; then the reverse recurrence dh_t = C_t dy_t + a_{t+1} dh_{t+1} over those 16 steps
// gives du, ddelta, dB and the running dA. dB and dC are summed over the warp's channels by a
// shuffle butterfly, over the block's warps in shared memory (fixed order), over channel tiles
// through partials (deterministic) or float atomics. Exponentials: 3 ex2 per (b, d, t, n).
template <class T>
__global__ void __launch_bounds__(kBwdThreads) scan_backward_kernel(ScanParams p) {
  extern __shared__ float4 smem4[];
  float* smem = reinterpret_cast<float*>(smem4);
  const int cpb = p.cpb, G = p.G, npad = p.npad;
  constexpr int nwarps = kBwdThreads / 32;
  float* s_u = smem;                        // [cpb][kPitch]: u, then du
  float* s_dt = s_u + cpb * kPitch;         // [cpb][kPitch]: dt, then d delta (raw)
  float* s_dy = s_dt + cpb * kPitch;        // [cpb][kPitch]: dy
  float* s_dz = s_dy + cpb * kPitch;        // [cpb][kPitch]: dout silu'(z), then dz
  float* s_B = s_dz + cpb * kPitch;         // [kChunk][npad]
  float* s_C = s_B + kChunk * npad;         // [kChunk][npad]
  float* s_h = s_C + kChunk * npad;         // [kSub][kSpt][threads]
  float* s_red = s_h + kSub * kSpt * kBwdThreads;  // [nwarps][kSub][2 npad]: dC | dB

  const int b = blockIdx.y, tile = blockIdx.x, d0 = tile * cpb;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int c = tid / G, g = tid % G, d = d0 + c;
  const int rows_valid = min(cpb, p.dim - d0);
  const int64_t L = p.len, N = p.nstate;
  const int64_t rowoff = (int64_t(b) * p.dim + d0) * L;
  const T* u = static_cast<const T*>(p.u) + rowoff;
  const T* delta = static_cast<const T*>(p.delta) + rowoff;
  const T* z = p.z ? static_cast<const T*>(p.z) + rowoff : nullptr;
  const T* dout = static_cast<const T*>(p.dout) + rowoff;
  const T* Bg = static_cast<const T*>(p.B) + int64_t(b) * N * L;
  const T* Cg = static_cast<const T*>(p.C) + int64_t(b) * N * L;
  T* du_g = static_cast<T*>(p.du) + rowoff;
  T* ddelta_g = static_cast<T*>(p.ddelta) + rowoff;
  T* dz_g = p.dz ? static_cast<T*>(p.dz) + rowoff : nullptr;

  float A2[kSpt], Af[kSpt], dA[kSpt], dhc[kSpt];
  const int64_t bd = int64_t(b) * p.dim + d;
#pragma unroll
  for (int k = 0; k < kSpt; ++k) {
    const int n = g * kSpt + k;
    const bool ok = d < p.dim && n < N;
    Af[k] = ok ? p.A[int64_t(d) * N + n] : 0.f;
    A2[k] = Af[k] * kLog2e;
    dA[k] = 0.f;
    dhc[k] = ok && p.dhl ? p.dhl[bd * N + n] : 0.f;
  }
  const float Dd = d < p.dim && p.D ? p.D[d] : 0.f;
  float dD_acc = 0.f, dbias_acc = 0.f;
  float* s_hc = s_h + tid;  // this lane's column: s_hc[(tt * kSpt + k) * kBwdThreads]

  for (int ck = p.nchunks - 1; ck >= 0; --ck) {
    const int64_t t0 = int64_t(ck) * kChunk;
    const int len = int(L - t0 < kChunk ? L - t0 : kChunk);
    load_tile<kBwdThreads>(u + t0, L, cpb, rows_valid, len, p.vec,
                           [&](int r, int tt, float v, bool) { s_u[r * kPitch + tt] = v; });
    load_tile<kBwdThreads>(delta + t0, L, cpb, rows_valid, len, p.vec, [&](int r, int tt, float v, bool ok) {
      if (ok) {
        v += p.bias ? p.bias[d0 + r] : 0.f;
        if (p.softplus) v = softplus_f(v);
      }
      s_dt[r * kPitch + tt] = v;
    });
    load_tile<kBwdThreads>(dout + t0, L, cpb, rows_valid, len, p.vec,
                           [&](int r, int tt, float v, bool) { s_dy[r * kPitch + tt] = v; });
    if (z) {
      load_tile<kBwdThreads>(z + t0, L, cpb, rows_valid, len, p.vec, [&](int r, int tt, float zv, bool) {
        // Same thread wrote s_dy at this position just above (identical index mapping).
        const float go = s_dy[r * kPitch + tt], s = sigmoid_f(zv);
        s_dy[r * kPitch + tt] = go * zv * s;
        s_dz[r * kPitch + tt] = go * s * (1.f + zv * (1.f - s));
      });
    }
    load_tile<kBwdThreads>(Bg + t0, L, npad, int(N), len, p.vec,
                           [&](int r, int tt, float v, bool) { s_B[tt * npad + r] = v; });
    load_tile<kBwdThreads>(Cg + t0, L, npad, int(N), len, p.vec,
                           [&](int r, int tt, float v, bool) { s_C[tt * npad + r] = v; });
    __syncthreads();

    // Pass 1: the states at the sub-chunk starts.
    float h0[kSpt], hb[3][kSpt];
#pragma unroll
    for (int k = 0; k < kSpt; ++k) {
      const int n = g * kSpt + k;
      float v = 0.f;
      if (d < p.dim && n < N) {
        if (ck > 0) v = p.ckpt[(bd * p.nchunks + ck - 1) * N + n];
        else if (p.h0) v = p.h0[bd * N + n];
      }
      h0[k] = v;
    }
    const int nsub = (len + kSub - 1) / kSub;
    {
      float h[kSpt];
#pragma unroll
      for (int k = 0; k < kSpt; ++k) h[k] = h0[k];
#pragma unroll
      for (int j = 0; j < 3; ++j) {
        if (j + 1 < nsub) {
          for (int tt = j * kSub; tt < (j + 1) * kSub; ++tt) {
            const float dt = s_dt[c * kPitch + tt], du = dt * s_u[c * kPitch + tt];
            float Bv[kSpt];
            read8(s_B + tt * npad + g * kSpt, Bv);
#pragma unroll
            for (int k = 0; k < kSpt; ++k) h[k] = fmaf(ex2(dt * A2[k]), h[k], du * Bv[k]);
          }
        }
#pragma unroll
        for (int k = 0; k < kSpt; ++k) hb[j][k] = h[k];
      }
    }

    for (int j = nsub - 1; j >= 0; --j) {
      const int ts = j * kSub, te = min(len, ts + kSub);
      float h[kSpt];
#pragma unroll
      for (int k = 0; k < kSpt; ++k) h[k] = j == 0 ? h0[k] : j == 1 ? hb[0][k] : j == 2 ? hb[1][k] : hb[2][k];
      // Recompute the sub-chunk: keep h_{t-1}, compute y (for dz) and dC.
      for (int tt = ts; tt < te; ++tt) {
        const float dt = s_dt[c * kPitch + tt], uu = s_u[c * kPitch + tt], du = dt * uu;
        const float dy = s_dy[c * kPitch + tt];
        float Bv[kSpt], Cv[kSpt], dC[kSpt];
        read8(s_B + tt * npad + g * kSpt, Bv);
        read8(s_C + tt * npad + g * kSpt, Cv);
        float y = 0.f;
#pragma unroll
        for (int k = 0; k < kSpt; ++k) {
          s_hc[((tt - ts) * kSpt + k) * kBwdThreads] = h[k];
          h[k] = fmaf(ex2(dt * A2[k]), h[k], du * Bv[k]);
          y = fmaf(Cv[k], h[k], y);
          dC[k] = dy * h[k];
        }
        y = group_sum(y, G);
        if (z && g == 0) s_dz[c * kPitch + tt] *= fmaf(Dd, uu, y);
        int base, cnt;
        bool writer;
        channel_reduce(dC, G, lane, base, cnt, writer);
        if (writer)
          for (int i = 0; i < cnt; ++i) s_red[(warp * kSub + tt - ts) * 2 * npad + g * kSpt + base + i] = dC[i];
      }
      // Reverse over the sub-chunk.
      for (int tt = te - 1; tt >= ts; --tt) {
        const float dt = s_dt[c * kPitch + tt], uu = s_u[c * kPitch + tt], du = dt * uu;
        const float dy = s_dy[c * kPitch + tt];
        float Bv[kSpt], Cv[kSpt], dB[kSpt];
        read8(s_B + tt * npad + g * kSpt, Bv);
        read8(s_C + tt * npad + g * kSpt, Cv);
        float sum_dhB = 0.f, sum_q = 0.f;
#pragma unroll
        for (int k = 0; k < kSpt; ++k) {
          const float a = ex2(dt * A2[k]);
          const float hp = s_hc[((tt - ts) * kSpt + k) * kBwdThreads];
          const float dh = fmaf(Cv[k], dy, dhc[k]);
          const float q = dh * (a * hp);
          dA[k] = fmaf(q, dt, dA[k]);
          sum_q = fmaf(q, Af[k], sum_q);
          sum_dhB = fmaf(dh, Bv[k], sum_dhB);
          dB[k] = dh * du;
          dhc[k] = a * dh;
        }
        sum_q = group_sum(sum_q, G);
        sum_dhB = group_sum(sum_dhB, G);
        if (g == 0) {
          float ddt = fmaf(sum_dhB, uu, sum_q);
          // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x))
          if (p.softplus) ddt *= -expm1f(-dt);
          s_u[c * kPitch + tt] = fmaf(sum_dhB, dt, Dd * dy);
          s_dt[c * kPitch + tt] = ddt;
          dD_acc = fmaf(dy, uu, dD_acc);
          dbias_acc += ddt;
        }
        int base, cnt;
        bool writer;
        channel_reduce(dB, G, lane, base, cnt, writer);
        if (writer)
          for (int i = 0; i < cnt; ++i)
            s_red[(warp * kSub + tt - ts) * 2 * npad + npad + g * kSpt + base + i] = dB[i];
      }
      __syncthreads();
      // Sum the warps' dC | dB for the sub-chunk and hand it on: per-tile partials
      // dBC[b][tile][2N][L] or atomics into dBC[b][2N][L].
      const int cnt_t = te - ts;
      for (int i = tid; i < 2 * int(N) * kSub; i += kBwdThreads) {
        const int q = i / kSub, tt = i % kSub;  // q < N: dC state q; else dB state q - N
        if (tt >= cnt_t) continue;
        const int col = q < N ? q : npad + q - int(N);
        float s = 0.f;
        for (int w = 0; w < nwarps; ++w) s += s_red[(w * kSub + tt) * 2 * npad + col];
        const int64_t t = t0 + ts + tt;
        if (p.atomic_dbc)
          atomicAdd(p.dBC + (int64_t(b) * 2 * N + q) * L + t, s);
        else
          p.dBC[((int64_t(b) * p.ntiles + tile) * 2 * N + q) * L + t] = s;
      }
      __syncthreads();
    }
    // Write du, d delta, dz of the chunk.
    store_tile<kBwdThreads>(du_g + t0, L, rows_valid, len, p.vec, [&](int r, int tt) { return s_u[r * kPitch + tt]; });
    store_tile<kBwdThreads>(ddelta_g + t0, L, rows_valid, len, p.vec,
                            [&](int r, int tt) { return s_dt[r * kPitch + tt]; });
    if (dz_g)
      store_tile<kBwdThreads>(dz_g + t0, L, rows_valid, len, p.vec, [&](int r, int tt) { return s_dz[r * kPitch + tt]; });
    __syncthreads();
  }

  if (d < p.dim) {
#pragma unroll
    for (int k = 0; k < kSpt; ++k) {
      const int n = g * kSpt + k;
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

// dB[b][n][t] = sum_tile part[b][tile][n][t], dC from rows N + n; tiles in order.
template <class T>
__global__ void reduce_dbc_kernel(const float* part, T* dB, T* dC, int64_t batch, int64_t ntiles, int64_t N,
                                  int64_t L) {
  const int64_t total = batch * 2 * N * L;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i % L, q = (i / L) % (2 * N), b = i / (2 * N * L);
    float s = 0.f;
    for (int64_t k = 0; k < ntiles; ++k) s += part[((b * ntiles + k) * 2 * N + q) * L + t];
    if (q < N) dC[(b * N + q) * L + t] = from_f<T>(s);
    else dB[(b * N + q - N) * L + t] = from_f<T>(s);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

ScanParams make_params(const ScanArgs& a, int threads) {
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
  p.dim = int(a.u.size(1));
  p.len = int(a.u.size(2));
  p.nstate = int(a.A.size(1));
  int G = 1;
  while (G * kSpt < p.nstate) G *= 2;
  p.G = G;
  p.npad = G * kSpt;
  p.cpb = threads / G;
  p.nchunks = int((a.u.size(2) + kChunk - 1) / kChunk);
  p.ntiles = (p.dim + p.cpb - 1) / p.cpb;
  p.softplus = a.delta_softplus;
  const int V = a.u.dtype() == DType::bf16 ? 8 : 4;
  p.vec = p.len % V == 0;
  for (const Tensor* t : {&a.u, &a.delta, &a.z, &a.B, &a.C})
    if (t->defined() && !aligned16(t->raw())) p.vec = false;
  return p;
}

void check_sizes(const char* op, const ScanArgs& a) {
  COIL_CHECK(a.u.size(2) < (int64_t(1) << 31) && a.u.size(1) < (int64_t(1) << 31) && a.u.size(0) <= 65535,
             "{}: batch must be <= 65535 and dim, length < 2^31 on CUDA, got u {}", op, describe(a.u));
}

}  // namespace

void selective_scan_forward(const ScanArgs& a, const ScanResult& r) {
  const char* op = "selective_scan_forward";
  check_sizes(op, a);
  ScanParams p = make_params(a, kFwdThreads);
  p.out = r.out.raw();
  p.final_state = r.final_state.data<float>();
  p.ckpt = r.checkpoints.defined() ? r.checkpoints.data<float>() : nullptr;
  const size_t smem = sizeof(float) * (size_t(2) * p.cpb * kPitch + size_t(2) * kChunk * p.npad);
  dim3 grid(unsigned(p.ntiles), unsigned(p.batch));
  cudaStream_t stream = coil::cuda::compute_stream();
  if (a.u.dtype() == DType::bf16) {
    COIL_CUDA_CHECK(cudaFuncSetAttribute(scan_forward_kernel<bf16_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    scan_forward_kernel<bf16_t><<<grid, kFwdThreads, smem, stream>>>(p);
  } else {
    COIL_CUDA_CHECK(cudaFuncSetAttribute(scan_forward_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    scan_forward_kernel<float><<<grid, kFwdThreads, smem, stream>>>(p);
  }
  COIL_CUDA_CHECK_LAUNCH("selective_scan_forward", "u {}, A {}, grid {}x{}, smem {}", describe(a.u), describe(a.A),
                         grid.x, grid.y, smem);
}

void selective_scan_backward(const ScanArgs& a, const ScanResult& saved, const Tensor& grad_out,
                             const Tensor& grad_final_state, const ScanGrads& grads, bool deterministic) {
  const char* op = "selective_scan_backward";
  check_sizes(op, a);
  ScanParams p = make_params(a, kBwdThreads);
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
  p.atomic_dbc = !deterministic;
  Tensor dbc = Tensor::empty({B, deterministic ? int64_t(p.ntiles) : 1, 2 * N, L}, DType::f32, dev);
  p.dBC = dbc.data<float>();
  cudaStream_t stream = coil::cuda::compute_stream();
  if (!deterministic) COIL_CUDA_CHECK(cudaMemsetAsync(p.dBC, 0, dbc.nbytes(), stream));

  const size_t smem = sizeof(float) * (size_t(4) * p.cpb * kPitch + size_t(2) * kChunk * p.npad +
                                       size_t(kSub) * kSpt * kBwdThreads + size_t(kBwdThreads / 32) * kSub * 2 * p.npad);
  dim3 grid(unsigned(p.ntiles), unsigned(p.batch));
  if (a.u.dtype() == DType::bf16) {
    COIL_CUDA_CHECK(cudaFuncSetAttribute(scan_backward_kernel<bf16_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    scan_backward_kernel<bf16_t><<<grid, kBwdThreads, smem, stream>>>(p);
  } else {
    COIL_CUDA_CHECK(cudaFuncSetAttribute(scan_backward_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    scan_backward_kernel<float><<<grid, kBwdThreads, smem, stream>>>(p);
  }
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
