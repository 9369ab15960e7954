// Depthwise causal conv1d on CUDA (math in kernels/conv1d.h), channel-last x (batch, length,
// dim). One thread per channel d of one (batch row, segment of kSeg steps): it walks its
// segment in time with the last kMaxK inputs in registers; consecutive threads take
// consecutive channels, so every load and store of a time step is coalesced. The width is
// right-aligned in a zero-padded kMaxK window so that every register index is static.
// Memory traffic: forward reads x and writes out once (plus width-1 halo steps per
// segment); backward reads x and dout once (plus halos), writes dx, and per-segment partial
// sums for dweight and dbias that a second kernel adds in a fixed order (deterministic).
// Documents (seq_idx): each thread keeps one bit per recent position of its row (does it
// start a document? one i32 load per step, the same address for the whole warp: a broadcast)
// and masks the window slots before the latest start; inputs are never cleared, only masked
// where they are used. These (and the carried state) are compiled into a second instance of
// each kernel (kStream), with less unrolling to keep its registers near the plain one's; the
// plain instance is the kernel as it is without them. The initial
// state fills the window of the first segment; the last segment writes the final state.
#include "core/cuda.h"
#include "kernels/conv1d.h"
#include "kernels/cuda/device_util.cuh"
#include "kernels/documents.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kSeg = 128;
constexpr int kMaxK = int(kConv1dMaxWidth);

// The thread's channel, segment and batch row: x[base + t * D] is x[b, t, d].
struct Lane {
  int d;
  int64_t t0, t1, base;
};
__device__ __forceinline__ Lane lane_of(int D, int64_t L) {
  Lane l;
  l.d = blockIdx.x * kThreads + threadIdx.x;
  l.t0 = int64_t(blockIdx.y) * kSeg;
  l.t1 = min(L, l.t0 + kSeg);
  l.base = int64_t(blockIdx.z) * L * D + l.d;
  return l;
}

// The optional inputs of a launch: documents (seq_idx rows) and the state before t = 0.
template <class T>
struct Stream {
  const int32_t* seq;  // (B, L) or null
  const T* init;       // (B, K-1, D) or null
  T* fin;              // (B, K-1, D) or null: written by the forward
  T* dinit;            // (B, K-1, D) or null: written by the backward
};

// The document starts among the latest positions of one row, one bit each: bit i says
// whether position t - i starts a document (t: the last position pushed). Positions <= 0
// never start one, so the bits also tell whether the initial state is still visible.
// kStream = false (neither documents nor a carried state): no bits, every slot is seen.
template <bool kStream>
struct StartBits {
  const int32_t* row = nullptr;  // seq_idx[b, :]
  uint32_t bits = 0;
  int32_t prev = 0;  // seq_idx[b, t]

  // Before a walk from t0: the starts in (t0 - K + 1, t0), the only earlier ones that can hide
  // an input of the window at t0.
  __device__ __forceinline__ void init(const int32_t* seq, int64_t L, int K, int64_t t0) {
    if (!kStream || !seq) return;
    row = seq + int64_t(blockIdx.z) * L;
    if (t0 == 0) return;
    for (int64_t p = max(int64_t(1), t0 - K + 2); p < t0; ++p) bits = (bits << 1) | uint32_t(starts_document(row, p));
    prev = row[t0 - 1];
  }
  // Position t, the next one of the walk (t >= L: past the row, no start).
  __device__ __forceinline__ void push(int64_t t, int64_t L) {
    if (!kStream || !row) return;
    const int32_t s = t < L ? row[t] : prev;
    bits = (bits << 1) | uint32_t(t > 0 && s != prev);
    prev = s;
  }
  // Whether position t sees window slot j (position t - (kMaxK-1) + j): no start in
  // (that position, t].
  __device__ __forceinline__ bool sees_slot(int j) const {
    return !kStream || (bits & ((1u << (kMaxK - 1 - j)) - 1u)) == 0;
  }
  // Whether position t - k sees position t - (K-1) (k < K): no start in between.
  __device__ __forceinline__ bool sees_back(int k, int K) const {
    return !kStream || k >= K - 1 || ((bits >> k) & ((1u << (K - 1 - k)) - 1u)) == 0;
  }
};

__device__ __forceinline__ void push(float* win, float v) {
#pragma unroll
  for (int j = 0; j < kMaxK - 1; ++j) win[j] = win[j + 1];
  win[kMaxK - 1] = v;
}

// wr: weights right-aligned (wr[kMaxK - K + k] = w[d, k]), wl: left-aligned (wl[k] = w[d, k]);
// zeros elsewhere. xw: slot j holds x[t0 - kMaxK + j] (the initial state before t = 0, zeros
// where there is none and in the slots that the first push moves out of the width), so that
// after the caller's first push of x[t0] the window ends at t0.
template <class T>
__device__ __forceinline__ void init_window(const T* x, const float* w, const T* init, Lane l, int D, int K, float* wr,
                                            float* wl, float* xw) {
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    const int kr = j - (kMaxK - K);
    wr[j] = kr >= 0 ? w[l.d * K + kr] : 0.f;
    wl[j] = j < K ? w[l.d * K + j] : 0.f;
    const int64_t t = l.t0 - kMaxK + j;
    xw[j] = kr >= 1 && t >= 0 ? to_f(x[l.base + t * D]) : 0.f;
  }
  // The initial state, pushed like inputs at t = -(K-1) .. -1 (pushes keep every register
  // index static; loading it into its slots directly doubled the backward's registers).
  if (init && l.t0 == 0)
    for (int i = 0; i < K - 1; ++i) push(xw, to_f(init[(int64_t(blockIdx.z) * (K - 1) + i) * D + l.d]));
}

// sum_j wr[j] xw[j] over the slots the last pushed position sees.
template <bool kStream>
__device__ __forceinline__ float dot_window(const float* wr, const float* xw, float s, const StartBits<kStream>& doc) {
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) s = fmaf(wr[j], doc.sees_slot(j) ? xw[j] : 0.f, s);
  return s;
}

// out[b, t, d] = act(bias[d] + sum_k w[d, k] x[b, t - (K-1) + k, d]) over the inputs t sees;
// the segment that ends the row also writes the final state (the last K-1 inputs as t = L-1
// sees them).
template <class T, bool kStream>
__global__ void __launch_bounds__(kThreads) conv1d_forward_kernel(const T* x, const float* w, const float* bias, T* out,
                                                                  Stream<T> st, int D, int64_t L, int K, bool silu) {
  const Lane l = lane_of(D, L);
  if (l.d >= D) return;
  float wr[kMaxK], wl[kMaxK], xw[kMaxK];
  init_window(x, w, kStream ? st.init : nullptr, l, D, K, wr, wl, xw);
  StartBits<kStream> doc;
  doc.init(st.seq, L, K, l.t0);
  const float b = bias ? bias[l.d] : 0.f;
#pragma unroll(kStream ? 4 : 8)
  for (int64_t t = l.t0; t < l.t1; ++t) {
    doc.push(t, L);
    push(xw, to_f(x[l.base + t * D]));
    float s = dot_window(wr, xw, b, doc);
    if (silu) s = __fdividef(s, 1.f + __expf(-s));
    out[l.base + t * D] = from_f<T>(s);
  }
  if (kStream && st.fin && l.t1 == L) {
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      const int i = j - (kMaxK - K + 1);  // slot j holds position L - K + 1 + i
      if (i >= 0) st.fin[(int64_t(blockIdx.z) * (K - 1) + i) * D + l.d] = from_f<T>(doc.sees_slot(j) ? xw[j] : 0.f);
    }
  }
}

// g[t] = dout[t] act'(pre[t]) for t in [t0, t1 + K - 1) (pre recomputed from the x window;
// g = 0 past L); dx[s] = sum_k w[k] g[s + K-1 - k] over the g[q] whose position q sees s
// (no document start in (s, q]), written once g[s + K-1] is known; the
// segment at t0 = 0 writes the initial state's gradient (s < 0) the same way. dweight and
// dbias partials over [t0, t1): part[((b nseg + seg) (K + 1) + k) D + d], entry K for dbias.
template <class T, bool kStream>
__global__ void __launch_bounds__(kThreads) conv1d_backward_kernel(const T* go, const T* x, const float* w,
                                                                   const float* bias, T* dx, float* part, Stream<T> st,
                                                                   int D, int64_t L, int K, bool silu) {
  const Lane l = lane_of(D, L);
  if (l.d >= D) return;
  float wr[kMaxK], wl[kMaxK], xw[kMaxK], gw[kMaxK], acc[kMaxK], accb = 0.f;
  init_window(x, w, kStream ? st.init : nullptr, l, D, K, wr, wl, xw);
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) gw[j] = acc[j] = 0.f;
  StartBits<kStream> doc;
  doc.init(st.seq, L, K, l.t0);
  const float b = bias ? bias[l.d] : 0.f;
  const int64_t tend = l.t1 + K - 1;
#pragma unroll(kStream ? 2 : 4)
  for (int64_t t = l.t0; t < tend; ++t) {
    float gt = 0.f;
    doc.push(t, L);
    if (t < L) {
      push(xw, to_f(x[l.base + t * D]));
      gt = to_f(go[l.base + t * D]);
      if (silu) {
        const float s = dot_window(wr, xw, b, doc), sg = __fdividef(1.f, 1.f + __expf(-s));
        gt *= sg * (1.f + s * (1.f - sg));
      }
    } else {
      push(xw, 0.f);
    }
    push(gw, gt);
    if (t < l.t1) {
#pragma unroll
      for (int j = 0; j < kMaxK; ++j) acc[j] = fmaf(gt, doc.sees_slot(j) ? xw[j] : 0.f, acc[j]);
      accb += gt;
    }
    const int64_t s = t - (K - 1);
    if (s >= l.t0 || (kStream && st.dinit && l.t0 == 0)) {
      float sum = 0.f;
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) sum = fmaf(wl[k], doc.sees_back(k, K) ? gw[kMaxK - 1 - k] : 0.f, sum);
      if (s >= l.t0) dx[l.base + s * D] = from_f<T>(sum);
      else st.dinit[(int64_t(blockIdx.z) * (K - 1) + s + K - 1) * D + l.d] = from_f<T>(sum);
    }
  }
  float* pp = part + (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * (K + 1) * D + l.d;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    const int k = j - (kMaxK - K);
    if (k >= 0) pp[int64_t(k) * D] = acc[j];
  }
  pp[int64_t(K) * D] = accb;
}

// dweight[d, k] = sum_{b, seg} part[((b nseg + seg) (K+1) + k) D + d] in order; dbias from entry K.
__global__ void conv1d_reduce_kernel(const float* part, float* dw, float* db, int64_t nparts, int D, int K) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= D * (K + 1)) return;
  const int k = i / D, d = i % D;
  float s = 0.f;
  for (int64_t q = 0; q < nparts; ++q) s += part[(q * (K + 1) + k) * D + d];
  if (k < K) dw[d * K + k] = s;
  else if (db) db[d] = s;
}

void check_grid(const char* op, const Tensor& x) {
  COIL_CHECK(x.size(0) <= 65535 && (x.size(1) + kSeg - 1) / kSeg <= 65535 && x.size(2) < (int64_t(1) << 31),
             "{}: x {} is too large for the grid (batch <= 65535, length <= 65535 * {}, dim < 2^31)", op, describe(x),
             kSeg);
}

dim3 grid_of(const Tensor& x) {
  return dim3{unsigned((x.size(2) + kThreads - 1) / kThreads), unsigned((x.size(1) + kSeg - 1) / kSeg),
              unsigned(x.size(0))};
}

template <class T>
Stream<T> stream_of(const Conv1dOptions& o, const Tensor& final_state, const Tensor& dinit) {
  Stream<T> st{};
  st.seq = o.seq_idx.defined() ? o.seq_idx.data<int32_t>() : nullptr;
  st.init = o.initial_state.defined() ? static_cast<const T*>(o.initial_state.raw()) : nullptr;
  st.fin = final_state.defined() ? static_cast<T*>(final_state.raw()) : nullptr;
  st.dinit = dinit.defined() ? static_cast<T*>(dinit.raw()) : nullptr;
  return st;
}

template <class T>
void launch_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Conv1dOptions& o,
                    const Tensor& out, const Tensor& final_state) {
  const int64_t L = x.size(1);
  const int D = int(x.size(2)), K = int(weight.size(1));
  const bool stream = o.seq_idx.defined() || o.initial_state.defined() || final_state.defined();
  auto kernel = stream ? conv1d_forward_kernel<T, true> : conv1d_forward_kernel<T, false>;
  kernel<<<grid_of(x), kThreads, 0, coil::cuda::compute_stream()>>>(
      static_cast<const T*>(x.raw()), weight.data<float>(), bias.defined() ? bias.data<float>() : nullptr,
      static_cast<T*>(out.raw()), stream_of<T>(o, final_state, Tensor()), D, L, K, silu);
  COIL_CUDA_CHECK_LAUNCH("conv1d_forward", "x {}, weight {}", describe(x), describe(weight));
}

template <class T>
void launch_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dOptions& o, const Conv1dGrads& g, const Tensor& part) {
  const int64_t L = x.size(1);
  const int D = int(x.size(2)), K = int(weight.size(1));
  const bool stream = o.seq_idx.defined() || o.initial_state.defined();
  auto kernel = stream ? conv1d_backward_kernel<T, true> : conv1d_backward_kernel<T, false>;
  kernel<<<grid_of(x), kThreads, 0, coil::cuda::compute_stream()>>>(
      static_cast<const T*>(grad_out.raw()), static_cast<const T*>(x.raw()), weight.data<float>(),
      bias.defined() ? bias.data<float>() : nullptr, static_cast<T*>(g.dx.raw()), part.data<float>(),
      stream_of<T>(o, Tensor(), g.dinitial_state), D, L, K, silu);
  COIL_CUDA_CHECK_LAUNCH("conv1d_backward", "x {}, weight {}", describe(x), describe(weight));
}

}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Conv1dOptions& o,
                    const Tensor& out, const Tensor& final_state) {
  check_grid("conv1d_forward", x);
  if (x.dtype() == DType::bf16) launch_forward<bf16_t>(x, weight, bias, silu, o, out, final_state);
  else launch_forward<float>(x, weight, bias, silu, o, out, final_state);
}

void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dOptions& o, const Conv1dGrads& g) {
  check_grid("conv1d_backward", x);
  const int D = int(x.size(2)), K = int(weight.size(1));
  const dim3 grid = grid_of(x);
  const int64_t nparts = int64_t(grid.z) * grid.y;
  Tensor part = Tensor::empty({nparts, K + 1, D}, DType::f32, x.device());
  if (x.dtype() == DType::bf16) launch_backward<bf16_t>(grad_out, x, weight, bias, silu, o, g, part);
  else launch_backward<float>(grad_out, x, weight, bias, silu, o, g, part);
  conv1d_reduce_kernel<<<(D * (K + 1) + 255) / 256, 256, 0, coil::cuda::compute_stream()>>>(
      part.data<float>(), g.dweight.data<float>(), g.dbias.defined() ? g.dbias.data<float>() : nullptr, nparts, D, K);
  COIL_CUDA_CHECK_LAUNCH("conv1d_backward/reduce", "x {}, weight {}", describe(x), describe(weight));
}

}  // namespace coil::kernels::cuda
