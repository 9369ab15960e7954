// Depthwise causal conv1d on CUDA (math in kernels/conv1d.h), channel-last x (batch, length,
// dim). One thread per V consecutive channels (V = 2 where dim and the pointers allow, one
// 4- or 8-byte access per tensor and step; else 1) of one (batch row, segment of kSeg steps):
// it walks its segment in time with the last W inputs of each channel in registers, loading
// kAhead steps at once before it computes them; consecutive threads take consecutive
// channels, so every load and store of a time step is coalesced. The width is right-aligned
// in a zero-padded W window (W = 4 for widths up to 4, else kMaxK) so that every register
// index is static.
// Memory traffic: forward reads x and writes out once (plus width-1 halo steps per
// segment); backward reads x and dout once (plus halos), writes dx, and per-segment partial
// sums for dweight and dbias that a second kernel adds in a fixed order (deterministic).
// Every output is the same sum in the same order for every V and W (the zero-padded slots
// add exact zeros), so for finite inputs the results do not depend on which instance ran.
// Documents (seq_idx): each thread keeps one bit per recent position of its row (does it
// start a document? one i32 load per step, the same address for the whole warp: a broadcast)
// and masks the window slots before the latest start; inputs are never cleared, only masked
// where they are used. These (and the carried state) are compiled into a separate instance of
// each kernel (kStream: V = 1, W = kMaxK, fewer steps ahead to keep its registers near the
// plain one's); the plain instances are the kernel as it is without them. The initial
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
// Channels per thread of the plain instances when dim and the pointers allow (one 4-byte
// bf16x2 or 8-byte float2 access per tensor and step: a warp moves 128 or 256 bytes); 1
// otherwise and for the document/state instances.
constexpr int kPackedChannels = 2;
// The register window of the plain instances for widths up to kShortWindow (Mamba's 4): half
// the registers and multiply-adds of the kMaxK window; the document/state instances keep kMaxK.
constexpr int kShortWindow = 4;

// The thread's first channel, segment and batch row: x[base + t * D + c] is x[b, t, d + c].
struct Lane {
  int d;
  int64_t t0, t1, base;
};
template <int V>
__device__ __forceinline__ Lane lane_of(int D, int64_t L) {
  Lane l;
  l.d = (blockIdx.x * kThreads + threadIdx.x) * V;
  l.t0 = int64_t(blockIdx.y) * kSeg;
  l.t1 = min(L, l.t0 + kSeg);
  l.base = int64_t(blockIdx.z) * L * D + l.d;
  return l;
}

// V consecutive channels of one step in one access (V * sizeof(T) aligned: checked at launch).
template <class T, int V>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p, int64_t i) {
  return *reinterpret_cast<const Pack<T, V>*>(p + i);
}
template <class T, int V>
__device__ __forceinline__ void store_pack(T* p, int64_t i, const float (&v)[V]) {
  Pack<T, V> q;
#pragma unroll
  for (int c = 0; c < V; ++c) q.v[c] = from_f<T>(v[c]);
  *reinterpret_cast<Pack<T, V>*>(p + i) = q;
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
  // Whether position t sees slot j of a W-wide window (position t - (W-1) + j): no start in
  // (that position, t].
  template <int W>
  __device__ __forceinline__ bool sees_slot(int j) const {
    return !kStream || (bits & ((1u << (W - 1 - j)) - 1u)) == 0;
  }
  // Whether position t - k sees position t - (K-1) (k < K): no start in between.
  __device__ __forceinline__ bool sees_back(int k, int K) const {
    return !kStream || k >= K - 1 || ((bits >> k) & ((1u << (K - 1 - k)) - 1u)) == 0;
  }
};

template <int W>
__device__ __forceinline__ void push(float (&win)[W], float v) {
#pragma unroll
  for (int j = 0; j < W - 1; ++j) win[j] = win[j + 1];
  win[W - 1] = v;
}

// Per channel c of the thread: wr weights right-aligned (wr[c][W - K + k] = w[d+c, k]),
// wl left-aligned (wl[c][k] = w[d+c, k]); zeros elsewhere. xw[c] slot j holds x[t0 - W + j]
// (the initial state before t = 0, zeros where there is none and in the slots that the first
// push moves out of the width), so that after the caller's first push of x[t0] the window
// ends at t0.
template <class T, int V, int W>
__device__ __forceinline__ void init_window(const T* x, const float* w, const T* init, Lane l, int D, int K,
                                            float (&wr)[V][W], float (&wl)[V][W], float (&xw)[V][W]) {
#pragma unroll
  for (int j = 0; j < W; ++j) {
    const int kr = j - (W - K);
    const int64_t t = l.t0 - W + j;
    Pack<T, V> in{};
    if (kr >= 1 && t >= 0) in = load_pack<T, V>(x, l.base + t * D);
#pragma unroll
    for (int c = 0; c < V; ++c) {
      wr[c][j] = kr >= 0 ? w[(l.d + c) * K + kr] : 0.f;
      wl[c][j] = j < K ? w[(l.d + c) * K + j] : 0.f;
      xw[c][j] = to_f(in.v[c]);
    }
  }
  // The initial state, pushed like inputs at t = -(K-1) .. -1 (pushes keep every register
  // index static; loading it into its slots directly doubled the backward's registers).
  if (init && l.t0 == 0)
    for (int i = 0; i < K - 1; ++i)
#pragma unroll
      for (int c = 0; c < V; ++c) push(xw[c], to_f(init[(int64_t(blockIdx.z) * (K - 1) + i) * D + l.d + c]));
}

// sum_j wr[j] xw[j] over the slots the last pushed position sees.
template <int W, bool kStream>
__device__ __forceinline__ float dot_window(const float (&wr)[W], const float (&xw)[W], float s,
                                            const StartBits<kStream>& doc) {
#pragma unroll
  for (int j = 0; j < W; ++j) s = fmaf(wr[j], doc.template sees_slot<W>(j) ? xw[j] : 0.f, s);
  return s;
}

// out[b, t, d] = act(bias[d] + sum_k w[d, k] x[b, t - (K-1) + k, d]) over the inputs t sees;
// the segment that ends the row also writes the final state (the last K-1 inputs as t = L-1
// sees them). Each thread owns V consecutive channels and loads kAhead steps of them at once
// before it computes them (the loads are in flight together; one at a time they could not
// pass the previous step's store, which may alias for all the compiler knows).
// Memory traffic: x read once plus K-1 halo steps per segment, out written once.
template <class T, int V, int W, bool kStream>
__global__ void __launch_bounds__(kThreads) conv1d_forward_kernel(const T* x, const float* w, const float* bias, T* out,
                                                                  Stream<T> st, int D, int64_t L, int K, bool silu) {
  constexpr int kAhead = kStream ? 4 : 8;
  const Lane l = lane_of<V>(D, L);
  if (l.d >= D) return;
  float wr[V][W], wl[V][W], xw[V][W], b[V];
  init_window<T, V, W>(x, w, kStream ? st.init : nullptr, l, D, K, wr, wl, xw);
  StartBits<kStream> doc;
  doc.init(st.seq, L, K, l.t0);
#pragma unroll
  for (int c = 0; c < V; ++c) b[c] = bias ? bias[l.d + c] : 0.f;
#pragma unroll 1
  for (int64_t t0 = l.t0; t0 < l.t1; t0 += kAhead) {
    Pack<T, V> in[kAhead];
#pragma unroll
    for (int u = 0; u < kAhead; ++u)
      if (t0 + u < l.t1) in[u] = load_pack<T, V>(x, l.base + (t0 + u) * D);
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t t = t0 + u;
      if (t >= l.t1) break;
      doc.push(t, L);
      float s[V];
#pragma unroll
      for (int c = 0; c < V; ++c) {
        push(xw[c], to_f(in[u].v[c]));
        s[c] = dot_window(wr[c], xw[c], b[c], doc);
        if (silu) s[c] = __fdividef(s[c], 1.f + __expf(-s[c]));
      }
      store_pack<T, V>(out, l.base + t * D, s);
    }
  }
  if (kStream && st.fin && l.t1 == L) {
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const int i = j - (W - K + 1);  // slot j holds position L - K + 1 + i
#pragma unroll
      for (int c = 0; c < V; ++c)
        if (i >= 0)
          st.fin[(int64_t(blockIdx.z) * (K - 1) + i) * D + l.d + c] =
              from_f<T>(doc.template sees_slot<W>(j) ? xw[c][j] : 0.f);
    }
  }
}

// g[t] = dout[t] act'(pre[t]) for t in [t0, t1 + K - 1) (pre recomputed from the x window;
// g = 0 past L); dx[s] = sum_k w[k] g[s + K-1 - k] over the g[q] whose position q sees s
// (no document start in (s, q]), written once g[s + K-1] is known; the
// segment at t0 = 0 writes the initial state's gradient (s < 0) the same way. dweight and
// dbias partials over [t0, t1): part[((b nseg + seg) (K + 1) + k) D + d], entry K for dbias.
// V channels per thread and kAhead steps of x and dout loaded at once, as in the forward.
// Memory traffic: x and dout read once plus K-1 halo steps per segment, dx written once,
// (K+1) D floats of partials per (batch row, segment).
// Blocks per SM the backward's registers are held to (65536 / (kThreads * registers)): what
// each instance needs without spills when its kAhead steps of loads are in flight together.
constexpr int backward_min_blocks(int V, int W, bool stream) {
  return stream ? 7 : V > 1 && W > kShortWindow ? 3 : 4;
}
template <class T, int V, int W, bool kStream>
__global__ void __launch_bounds__(kThreads, backward_min_blocks(V, W, kStream))
    conv1d_backward_kernel(const T* go, const T* x, const float* w, const float* bias, T* dx, float* part,
                           Stream<T> st, int D, int64_t L, int K, bool silu) {
  constexpr int kAhead = kStream ? 2 : 8;
  const Lane l = lane_of<V>(D, L);
  if (l.d >= D) return;
  float wr[V][W], wl[V][W], xw[V][W], gw[V][W], acc[V][W], accb[V], b[V];
  init_window<T, V, W>(x, w, kStream ? st.init : nullptr, l, D, K, wr, wl, xw);
#pragma unroll
  for (int c = 0; c < V; ++c) {
#pragma unroll
    for (int j = 0; j < W; ++j) gw[c][j] = acc[c][j] = 0.f;
    accb[c] = 0.f;
    b[c] = bias ? bias[l.d + c] : 0.f;
  }
  StartBits<kStream> doc;
  doc.init(st.seq, L, K, l.t0);
  const int64_t tend = l.t1 + K - 1, tload = min(L, tend);
#pragma unroll 1
  for (int64_t t0 = l.t0; t0 < tend; t0 += kAhead) {
    Pack<T, V> xin[kAhead], gin[kAhead];
#pragma unroll
    for (int u = 0; u < kAhead; ++u)
      if (t0 + u < tload) {
        xin[u] = load_pack<T, V>(x, l.base + (t0 + u) * D);
        gin[u] = load_pack<T, V>(go, l.base + (t0 + u) * D);
      }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      const int64_t t = t0 + u;
      if (t >= tend) break;
      doc.push(t, L);
#pragma unroll
      for (int c = 0; c < V; ++c) {
        float gt = 0.f;
        if (t < L) {
          push(xw[c], to_f(xin[u].v[c]));
          gt = to_f(gin[u].v[c]);
          if (silu) {
            const float s = dot_window(wr[c], xw[c], b[c], doc), sg = __fdividef(1.f, 1.f + __expf(-s));
            gt *= sg * (1.f + s * (1.f - sg));
          }
        } else {
          push(xw[c], 0.f);
        }
        push(gw[c], gt);
        if (t < l.t1) {
#pragma unroll
          for (int j = 0; j < W; ++j) acc[c][j] = fmaf(gt, doc.template sees_slot<W>(j) ? xw[c][j] : 0.f, acc[c][j]);
          accb[c] += gt;
        }
      }
      const int64_t s = t - (K - 1);
      if (s >= l.t0 || (kStream && st.dinit && l.t0 == 0)) {
        float sum[V];
#pragma unroll
        for (int c = 0; c < V; ++c) {
          sum[c] = 0.f;
#pragma unroll
          for (int k = 0; k < W; ++k) sum[c] = fmaf(wl[c][k], doc.sees_back(k, K) ? gw[c][W - 1 - k] : 0.f, sum[c]);
        }
        if (s >= l.t0) store_pack<T, V>(dx, l.base + s * D, sum);
        else
#pragma unroll
          for (int c = 0; c < V; ++c)
            st.dinit[(int64_t(blockIdx.z) * (K - 1) + s + K - 1) * D + l.d + c] = from_f<T>(sum[c]);
      }
    }
  }
  float* pp = part + (int64_t(blockIdx.z) * gridDim.y + blockIdx.y) * (K + 1) * D + l.d;
#pragma unroll
  for (int c = 0; c < V; ++c) {
#pragma unroll
    for (int j = 0; j < W; ++j) {
      const int k = j - (W - K);
      if (k >= 0) pp[int64_t(k) * D + c] = acc[c][j];
    }
    pp[int64_t(K) * D + c] = accb[c];
  }
}

// dweight[d, k] = sum_{b, seg} part[((b nseg + seg) (K+1) + k) D + d] in order; dbias from entry K.
// Memory traffic: the partials read once. Latency-bound (one thread per output): the
// kReduceAhead loads of a chunk are issued together and then added in order.
constexpr int kReduceThreads = 64;
constexpr int kReduceAhead = 32;
__global__ void __launch_bounds__(kReduceThreads) conv1d_reduce_kernel(const float* part, float* dw, float* db,
                                                                       int64_t nparts, int D, int K) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= D * (K + 1)) return;
  const int k = i / D, d = i % D;
  const int64_t stride = int64_t(K + 1) * D;
  const float* p = part + int64_t(k) * D + d;
  float s = 0.f;
  int64_t q = 0;
  for (; q + kReduceAhead <= nparts; q += kReduceAhead) {
    float v[kReduceAhead];
#pragma unroll
    for (int u = 0; u < kReduceAhead; ++u) v[u] = p[(q + u) * stride];
#pragma unroll
    for (int u = 0; u < kReduceAhead; ++u) s += v[u];
  }
  for (; q < nparts; ++q) s += p[q * stride];
  if (k < K) dw[d * K + k] = s;
  else if (db) db[d] = s;
}

void check_grid(const char* op, const Tensor& x) {
  COIL_CHECK(x.size(0) <= 65535 && (x.size(1) + kSeg - 1) / kSeg <= 65535 && x.size(2) < (int64_t(1) << 31),
             "{}: x {} is too large for the grid (batch <= 65535, length <= 65535 * {}, dim < 2^31)", op, describe(x),
             kSeg);
}

// V channels per thread: kThreads V channels per block.
dim3 grid_of(const Tensor& x, int V) {
  return dim3{unsigned((x.size(2) / V + kThreads - 1) / kThreads), unsigned((x.size(1) + kSeg - 1) / kSeg),
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

// The plain instances take kPackedChannels channels per thread when dim is a multiple of it
// and every tensor they access in packs starts on a pack boundary; else one.
template <class T>
int channels_per_thread(bool stream, int D, std::initializer_list<const Tensor*> packed) {
  if (stream || D % kPackedChannels != 0) return 1;
  for (const Tensor* t : packed)
    if (reinterpret_cast<uintptr_t>(t->raw()) % (kPackedChannels * sizeof(T)) != 0) return 1;
  return kPackedChannels;
}

// The instance of a kernel family for a launch: the documents/state one, else by channels per
// thread and window. Family::of<V, W, kStream>() is the kernel.
template <class Family>
auto instance_of(bool stream, int V, int K) {
  const bool short_window = K <= kShortWindow;
  if (stream) return Family::template of<1, kMaxK, true>();
  if (V == 1)
    return short_window ? Family::template of<1, kShortWindow, false>() : Family::template of<1, kMaxK, false>();
  return short_window ? Family::template of<kPackedChannels, kShortWindow, false>()
                      : Family::template of<kPackedChannels, kMaxK, false>();
}
template <class T>
struct ForwardKernels {
  template <int V, int W, bool kStream>
  static auto of() { return conv1d_forward_kernel<T, V, W, kStream>; }
};
template <class T>
struct BackwardKernels {
  template <int V, int W, bool kStream>
  static auto of() { return conv1d_backward_kernel<T, V, W, kStream>; }
};

template <class T>
void launch_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Conv1dOptions& o,
                    const Tensor& out, const Tensor& final_state) {
  const int64_t L = x.size(1);
  const int D = int(x.size(2)), K = int(weight.size(1));
  const bool stream = o.seq_idx.defined() || o.initial_state.defined() || final_state.defined();
  const int V = channels_per_thread<T>(stream, D, {&x, &out});
  auto kernel = instance_of<ForwardKernels<T>>(stream, V, K);
  kernel<<<grid_of(x, V), kThreads, 0, coil::cuda::compute_stream()>>>(
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
  const int V = channels_per_thread<T>(stream, D, {&grad_out, &x, &g.dx});
  auto kernel = instance_of<BackwardKernels<T>>(stream, V, K);
  kernel<<<grid_of(x, V), kThreads, 0, coil::cuda::compute_stream()>>>(
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
  const dim3 grid = grid_of(x, 1);
  const int64_t nparts = int64_t(grid.z) * grid.y;
  Tensor part = Tensor::empty({nparts, K + 1, D}, DType::f32, x.device());
  if (x.dtype() == DType::bf16) launch_backward<bf16_t>(grad_out, x, weight, bias, silu, o, g, part);
  else launch_backward<float>(grad_out, x, weight, bias, silu, o, g, part);
  conv1d_reduce_kernel<<<(D * (K + 1) + kReduceThreads - 1) / kReduceThreads, kReduceThreads, 0,
                         coil::cuda::compute_stream()>>>(
      part.data<float>(), g.dweight.data<float>(), g.dbias.defined() ? g.dbias.data<float>() : nullptr, nparts, D, K);
  COIL_CUDA_CHECK_LAUNCH("conv1d_backward/reduce", "x {}, weight {}", describe(x), describe(weight));
}

}  // namespace coil::kernels::cuda
