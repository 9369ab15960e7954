// The decode kernels on CUDA (math in kernels/decode.h): one token per batch row, so every
// kernel is memory bound and small; all of them take their positions from device memory and
// never synchronize, so a decode step can be captured in a CUDA graph.
#include <cuda_bf16.h>

#include <algorithm>

#include "core/cuda.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/float_access.cuh"
#include "kernels/conv1d.h"
#include "kernels/decode.h"
#include "kernels/selective_scan.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxWidth = int(kConv1dMaxWidth);

__device__ __forceinline__ float silu_f(float v) { return v / (1.f + __expf(-v)); }

// conv1d_update: one thread per (b, d), consecutive threads on consecutive channels, so the
// state rows (width - 1 of them), x and out are read and written coalesced.
// Traffic: reads conv_state and x, writes conv_state and out: (2 (width - 1) + 2) B dim elements.
template <class T>
__global__ void __launch_bounds__(kThreads) conv1d_update_kernel(T* state, const T* xz, const float* w,
                                                                 const float* bias, T* out, int dim, int width) {
  const int d = blockIdx.x * kThreads + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (d >= dim) return;
  T* s = state + b * (width - 1) * dim + d;
  float win[kMaxWidth];
#pragma unroll
  for (int k = 0; k < kMaxWidth; ++k) win[k] = k < width - 1 ? load(s, int64_t(k) * dim) : 0.f;
  const float x = load(xz, b * 2 * dim + d);
  float acc = bias ? bias[d] : 0.f;
#pragma unroll
  for (int k = 0; k < kMaxWidth; ++k)
    if (k < width) acc = fmaf(w[int64_t(d) * width + k], k == width - 1 ? x : win[k], acc);
  store(out, b * dim + d, silu_f(acc));
#pragma unroll
  for (int k = 0; k < kMaxWidth; ++k)
    if (k < width - 1) store(s, int64_t(k) * dim, k == width - 2 ? x : win[k + 1]);
}

// selective_state_update: one thread per (b, d) updates its d_state fp32 states in registers
// (float4 loads and stores of its contiguous state row); B and C of row b are staged in shared
// memory once per block. Traffic: reads and writes the state (2 B dim d_state fp32), reads
// x, delta, z, A_log, D, delta_bias and writes out. d_state exponentials per (b, d) for
// exp(dt A), plus d_state for A = -exp(A_log) (A_log stays in L2 across the batch).
template <class T>
__global__ void __launch_bounds__(kThreads)
    state_update_kernel(float* state, const T* x, const T* delta, const float* A_log, const T* x_dbl,
                        const float* D, const T* xz, const float* delta_bias, T* out, int dim, int n_state,
                        int dbl) {
  __shared__ float bc[2 * kScanMaxStateCuda];
  const int64_t b = blockIdx.y;
  for (int i = threadIdx.x; i < 2 * n_state; i += kThreads) bc[i] = load(x_dbl, b * dbl + dbl - 2 * n_state + i);
  __syncthreads();
  const int d = blockIdx.x * kThreads + threadIdx.x;
  if (d >= dim) return;
  const int64_t bd = b * dim + d;
  const float u = load(x, bd);
  float dt = load(delta, bd) + (delta_bias ? delta_bias[d] : 0.f);
  dt = dt > 20.f ? dt : log1pf(expf(dt));
  const float du = dt * u;
  float y = D ? D[d] * u : 0.f;
  float* h = state + bd * n_state;
  const float* a_log = A_log + int64_t(d) * n_state;
  auto step = [&](float hn, int n) {
    hn = expf(-dt * expf(a_log[n])) * hn + bc[n] * du;
    y = fmaf(bc[n_state + n], hn, y);
    return hn;
  };
  if (n_state % 4 == 0) {
    for (int n = 0; n < n_state; n += 4) {
      float4 v = *reinterpret_cast<const float4*>(h + n);
      v.x = step(v.x, n);
      v.y = step(v.y, n + 1);
      v.z = step(v.z, n + 2);
      v.w = step(v.w, n + 3);
      *reinterpret_cast<float4*>(h + n) = v;
    }
  } else {
    for (int n = 0; n < n_state; ++n) h[n] = step(h[n], n);
  }
  store(out, bd, y * silu_f(load(xz, b * 2 * dim + dim + d)));
}

// append_kv: one thread per element of k and v of qkv (batch, T, 3, H, hd), written to slot
// positions[b] + t of the caches (batch, H, capacity, hd). Traffic: reads 2/3 of qkv, writes
// as much into the caches.
template <class T>
__global__ void append_kv_kernel(const T* qkv, T* k_cache, T* v_cache, const int32_t* positions, int64_t n,
                                 int64_t T_len, int heads, int hd, int64_t capacity) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int i = int(idx % hd);
    const int h = int((idx / hd) % heads);
    const int64_t bt = idx / (int64_t(hd) * heads);  // b * T + t
    const int64_t b = bt / T_len, t = bt % T_len;
    const int64_t slot = int64_t(positions[b]) + t;
    if (slot >= capacity) continue;
    const int64_t src = ((bt * 3 + 1) * heads + h) * hd + i, hd_heads = int64_t(heads) * hd;
    const int64_t dst = ((b * heads + h) * capacity + slot) * hd + i;
    k_cache[dst] = qkv[src];
    v_cache[dst] = qkv[src + hd_heads];
  }
}

__global__ void advance_positions_kernel(int32_t* positions, int n, int32_t count) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) positions[i] += count;
}

// ---- attention_decode (flash decoding) ----
// Block (b, h, split): 4 warps over the keys [split * split_len, ...) of row b that the query
// at p = positions[b] sees. A key row of hd elements is read by a group of G = hd / 8 lanes
// (16 bytes each for bf16; G rounded up to a power of two, spare lanes idle), so a warp takes
// 32 / G keys at once, U groups of them before it updates its online softmax (the keys and
// values of all U loaded first: 2 U 16-byte loads in flight per lane). Scores in the log2 domain (q pre-scaled by scale * log2 e).
// Lane groups, then warps, merge their (max, sum, accumulator) triples. One split writes out
// directly; several write unnormalized partials that combine_kernel merges. Traffic: each
// key and value row is read once: 2 (p + 1) hd elements per (b, h); the partials add
// (hd + 2) floats per split.
constexpr int kDecodeWarps = 4;
constexpr int kUnroll = 4;

struct Softmax8 {
  float m = -INFINITY, l = 0.f, acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  __device__ void merge(float m2, float l2, const float* acc2) {
    const float nm = fmaxf(m, m2);
    if (nm == -INFINITY) return;
    const float a = exp2f(m - nm), c = exp2f(m2 - nm);
    l = l * a + l2 * c;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * a + acc2[i] * c;
    m = nm;
  }
};

// Eight consecutive elements of a row, as loaded (16 bytes of bf16, 32 of f32) and as floats:
// the loads of a group of keys are all issued before any of them is used.
template <class T>
struct Row8;
template <>
struct Row8<__nv_bfloat16> {
  uint4 raw;
  __device__ void load(const __nv_bfloat16* p) { raw = *reinterpret_cast<const uint4*>(p); }
  __device__ float operator[](int i) const { return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(&raw)[i]); }
};
template <>
struct Row8<float> {
  float4 raw[2];
  __device__ void load(const float* p) {
    raw[0] = reinterpret_cast<const float4*>(p)[0];
    raw[1] = reinterpret_cast<const float4*>(p)[1];
  }
  __device__ float operator[](int i) const { return reinterpret_cast<const float*>(raw)[i]; }
};

template <int HD>
struct DecodeShape {
  static constexpr int kChunks = HD / 8;                                   // 16-byte pieces of a row
  static constexpr int kGroup = kChunks <= 8 ? 8 : 16;                     // lanes per key (power of two)
  static constexpr int kKeysPerWarp = 32 / kGroup;
  static constexpr int kKeysPerStep = kKeysPerWarp * kDecodeWarps;         // keys a block takes at once
};

// q: row (b, h) at q + (b * q_batch_stride + h * HD). partial_o (B H, splits, HD) and
// partial_ml (B H, splits, 2) unless splits == 1 (then out is written).
template <class T, int HD>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    attention_decode_kernel(const T* q, int64_t q_batch_stride, const T* k_cache, const T* v_cache,
                            const int32_t* positions, T* out, float* partial_o, float* partial_ml, int heads,
                            int64_t capacity, int64_t split_len, int64_t window, float scale_log2) {
  using S = DecodeShape<HD>;
  const int split = blockIdx.x, splits = gridDim.x;
  const int64_t bh = blockIdx.y, b = bh / heads, h = bh % heads;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / S::kGroup, chunk = lane % S::kGroup;
  const bool active_lane = chunk < S::kChunks;

  const int64_t pos = min(int64_t(positions[b]), capacity - 1);
  const int64_t first = window > 0 ? max(int64_t(0), pos - window + 1) : 0;
  const int64_t begin = max(first, int64_t(split) * split_len), end = min(pos + 1, int64_t(split + 1) * split_len);

  float qv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (active_lane) {
    Row8<T> qr;
    qr.load(q + b * q_batch_stride + h * HD + chunk * 8);
#pragma unroll
    for (int i = 0; i < 8; ++i) qv[i] = qr[i] * scale_log2;
  }
  const T* K = k_cache + bh * capacity * HD + chunk * 8;
  const T* V = v_cache + bh * capacity * HD + chunk * 8;

  Softmax8 st;
  // The loop bound is the same for the whole warp (the shuffles need every lane).
  for (int64_t warp_base = begin + warp * S::kKeysPerWarp; warp_base < end; warp_base += kUnroll * S::kKeysPerStep) {
    Row8<T> kr[kUnroll], vr[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {  // keys and values of kUnroll keys in flight at once
      const int64_t key = warp_base + group + int64_t(u) * S::kKeysPerStep;
      if (active_lane && key < end) {
        kr[u].load(K + key * HD);
        vr[u].load(V + key * HD);
      }
    }
    float s[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t key = warp_base + group + int64_t(u) * S::kKeysPerStep;
      float partial = 0.f;
      if (active_lane && key < end)
#pragma unroll
        for (int i = 0; i < 8; ++i) partial = fmaf(qv[i], kr[u][i], partial);
#pragma unroll
      for (int o = S::kGroup / 2; o > 0; o >>= 1) partial += __shfl_xor_sync(0xffffffffu, partial, o);
      s[u] = key < end ? partial : -INFINITY;
    }
    float nm = st.m;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) nm = fmaxf(nm, s[u]);
    if (nm == -INFINITY) continue;  // this lane group's keys all lie past the end
    const float correction = exp2f(st.m - nm);
    st.l *= correction;
#pragma unroll
    for (int i = 0; i < 8; ++i) st.acc[i] *= correction;
    st.m = nm;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t key = warp_base + group + int64_t(u) * S::kKeysPerStep;
      if (key >= end) continue;
      const float p = exp2f(s[u] - nm);
      st.l += p;
      if (active_lane)
#pragma unroll
        for (int i = 0; i < 8; ++i) st.acc[i] = fmaf(p, vr[u][i], st.acc[i]);
    }
  }
  // Lane groups of a warp hold the same chunk at lanes chunk, chunk + G, ...: merge them.
#pragma unroll
  for (int o = S::kGroup; o < 32; o <<= 1) {
    float acc2[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) acc2[i] = __shfl_xor_sync(0xffffffffu, st.acc[i], o);
    const float m2 = __shfl_xor_sync(0xffffffffu, st.m, o), l2 = __shfl_xor_sync(0xffffffffu, st.l, o);
    st.merge(m2, l2, acc2);
  }
  __shared__ float sm_m[kDecodeWarps], sm_l[kDecodeWarps], sm_acc[kDecodeWarps][HD];
  if (lane < S::kChunks) {
#pragma unroll
    for (int i = 0; i < 8; ++i) sm_acc[warp][lane * 8 + i] = st.acc[i];
  }
  if (lane == 0) sm_m[warp] = st.m, sm_l[warp] = st.l;
  __syncthreads();
  float m = -INFINITY;
#pragma unroll
  for (int w = 0; w < kDecodeWarps; ++w) m = fmaxf(m, sm_m[w]);
  for (int i = threadIdx.x; i < HD; i += kDecodeWarps * 32) {
    float l = 0.f, o = 0.f;
    if (m != -INFINITY)
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float c = exp2f(sm_m[w] - m);
        l += sm_l[w] * c;
        o += sm_acc[w][i] * c;
      }
    if (splits == 1) {
      store(out, bh * HD + i, o / l);
    } else {
      partial_o[(bh * splits + split) * HD + i] = o;
      if (i == 0) partial_ml[(bh * splits + split) * 2] = m, partial_ml[(bh * splits + split) * 2 + 1] = l;
    }
  }
}

// Merges the splits of one (b, h): out = sum_s o_s 2^(m_s - M) / sum_s l_s 2^(m_s - M).
// Traffic: reads splits * (hd + 2) floats, writes hd elements.
template <class T>
__global__ void attention_decode_combine_kernel(const float* partial_o, const float* partial_ml, T* out, int splits,
                                                int hd) {
  const int64_t bh = blockIdx.x;
  const float* ml = partial_ml + bh * splits * 2;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, ml[2 * s]);
  for (int i = threadIdx.x; i < hd; i += blockDim.x) {
    float l = 0.f, o = 0.f;
    for (int s = 0; s < splits; ++s) {
      if (ml[2 * s + 1] == 0.f) continue;
      const float c = exp2f(ml[2 * s] - m);
      l += ml[2 * s + 1] * c;
      o += partial_o[(bh * splits + s) * hd + i] * c;
    }
    store(out, bh * hd + i, o / l);
  }
}

// Splits of the cache length: about four blocks per multiprocessor, each split at least 64
// keys. Depends only on the shapes, so a captured graph keeps a valid grid.
int decode_splits(int64_t batch_heads, int64_t capacity) {
  const int64_t wanted = (4 * int64_t(coil::cuda::multiprocessor_count()) + batch_heads - 1) / batch_heads;
  return int(std::max<int64_t>(1, std::min(wanted, (capacity + 63) / 64)));
}

template <class T, int HD>
void launch_attention_decode(const DecodeAttentionProblem& p, const Tensor& q, const Tensor& k_cache,
                             const Tensor& v_cache, const Tensor& positions, const Tensor& out) {
  const int64_t bh = p.batch * p.heads;
  const int splits = decode_splits(bh, p.capacity);
  const int64_t split_len = (p.capacity + splits - 1) / splits;
  const int64_t q_batch_stride = q.numel() / p.batch;  // (B, H, hd) or a packed (B, 1, 3, H, hd)
  Tensor partial_o, partial_ml;
  if (splits > 1) {
    partial_o = Tensor::empty({bh, splits, HD}, DType::f32, q.device());
    partial_ml = Tensor::empty({bh, splits, 2}, DType::f32, q.device());
  }
  cudaStream_t stream = coil::cuda::compute_stream();
  const float scale_log2 = float(p.scale * 1.4426950408889634);
  attention_decode_kernel<T, HD><<<dim3(splits, unsigned(bh)), kDecodeWarps * 32, 0, stream>>>(
      static_cast<const T*>(q.raw()), q_batch_stride, static_cast<const T*>(k_cache.raw()),
      static_cast<const T*>(v_cache.raw()), positions.data<int32_t>(), static_cast<T*>(out.raw()),
      splits > 1 ? partial_o.data<float>() : nullptr, splits > 1 ? partial_ml.data<float>() : nullptr,
      int(p.heads), p.capacity, split_len, p.window, scale_log2);
  COIL_CUDA_CHECK_LAUNCH("attention_decode", "q {}, cache {}, splits {}", describe(q), describe(k_cache), splits);
  if (splits == 1) return;
  attention_decode_combine_kernel<T><<<unsigned(bh), HD, 0, stream>>>(partial_o.data<float>(), partial_ml.data<float>(),
                                                                     static_cast<T*>(out.raw()), splits, HD);
  COIL_CUDA_CHECK_LAUNCH("attention_decode_combine", "q {}, splits {}", describe(q), splits);
}

}  // namespace

void conv1d_update(const Tensor& conv_state, const Tensor& xz, const Tensor& weight, const Tensor& bias,
                   const Tensor& out) {
  const int64_t batch = conv_state.size(0), dim = weight.size(0), width = weight.size(1);
  COIL_CHECK(width <= kMaxWidth, "conv1d_update: width {} exceeds the CUDA limit {}", width, kMaxWidth);
  dim3 grid(unsigned((dim + kThreads - 1) / kThreads), unsigned(batch));
  dispatch_gpu_float("conv1d_update", xz, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    conv1d_update_kernel<T><<<grid, kThreads, 0, coil::cuda::compute_stream()>>>(
        static_cast<T*>(conv_state.raw()), static_cast<const T*>(xz.raw()), weight.data<float>(),
        bias.defined() ? bias.data<float>() : nullptr, static_cast<T*>(out.raw()), int(dim), int(width));
  });
  COIL_CUDA_CHECK_LAUNCH("conv1d_update", "conv_state {}, xz {}", describe(conv_state), describe(xz));
}

void selective_state_update(const StateUpdateArgs& a, const Tensor& out) {
  const int64_t batch = a.state.size(0), dim = a.state.size(1), n_state = a.state.size(2);
  dim3 grid(unsigned((dim + kThreads - 1) / kThreads), unsigned(batch));
  auto opt = [](const Tensor& t) { return t.defined() ? t.data<float>() : nullptr; };
  dispatch_gpu_float("selective_state_update", a.x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    state_update_kernel<T><<<grid, kThreads, 0, coil::cuda::compute_stream()>>>(
        a.state.data<float>(), static_cast<const T*>(a.x.raw()), static_cast<const T*>(a.delta.raw()),
        a.A_log.data<float>(), static_cast<const T*>(a.x_dbl.raw()), opt(a.D), static_cast<const T*>(a.xz.raw()),
        opt(a.delta_bias), static_cast<T*>(out.raw()), int(dim), int(n_state), int(a.x_dbl.size(1)));
  });
  COIL_CUDA_CHECK_LAUNCH("selective_state_update", "state {}, x {}", describe(a.state), describe(a.x));
}

void append_kv(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions) {
  const int64_t T_len = qkv.size(1), heads = qkv.size(3), hd = qkv.size(4);
  const int64_t n = qkv.size(0) * T_len * heads * hd;
  const int grid = int(std::min<int64_t>((n + 255) / 256, 65536));
  dispatch_gpu_float("append_kv", qkv, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    append_kv_kernel<T><<<grid, 256, 0, coil::cuda::compute_stream()>>>(
        static_cast<const T*>(qkv.raw()), static_cast<T*>(k_cache.raw()), static_cast<T*>(v_cache.raw()),
        positions.data<int32_t>(), n, T_len, int(heads), int(hd), k_cache.size(2));
  });
  COIL_CUDA_CHECK_LAUNCH("append_kv", "qkv {}, cache {}", describe(qkv), describe(k_cache));
}

void attention_decode(const DecodeAttentionProblem& p, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& positions, const Tensor& out) {
  dispatch_gpu_float("attention_decode", q, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    switch (p.head_dim) {
      case 64: return launch_attention_decode<T, 64>(p, q, k_cache, v_cache, positions, out);
      case 96: return launch_attention_decode<T, 96>(p, q, k_cache, v_cache, positions, out);
      case 128: return launch_attention_decode<T, 128>(p, q, k_cache, v_cache, positions, out);
      default: fail("attention_decode: head dim {} is not one of {}", p.head_dim, attention_cuda_head_dims());
    }
  });
}

void advance_positions(const Tensor& positions, int64_t count) {
  const int n = int(positions.numel());
  advance_positions_kernel<<<(n + 255) / 256, 256, 0, coil::cuda::compute_stream()>>>(positions.data<int32_t>(), n,
                                                                                     int32_t(count));
  COIL_CUDA_CHECK_LAUNCH("advance_positions", "positions {}", describe(positions));
}

}  // namespace coil::kernels::cuda
