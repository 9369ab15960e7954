// Token sampling on the GPU (definitions in kernels/sampling.h): one block of 1024 threads
// per row, every reduction a fixed tree, so a row draws the same id run after run.
//   greedy: one pass, the argmax.
//   sampling: a pass for the max; top-k: a radix select of the k-th largest score on its
//     order-preserving 32-bit key, 8 bits a pass (4 passes, integer histograms in shared
//     memory); top-p: a bisection over the keys for the largest threshold whose kept mass
//     reaches top_p (at most 32 passes, each a block sum; only when top_p < 1); the draw:
//     each thread sums exp(s - max) over a contiguous range of ids, a block-wide exclusive
//     scan finds the thread whose range holds u * total, and that thread walks its range.
// Traffic: each pass reads the row of V logits (from L2 after the first); V exponentials per
// pass that needs the mass.
#include <cuda_bf16.h>

#include <climits>

#include "core/cuda.h"
#include "core/philox.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/cuda/float_access.cuh"
#include "kernels/sampling.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
static_assert(kWarps == 32, "the block scan keeps one warp total per lane");

// Monotone map of floats to unsigned keys: a < b exactly when key(a) < key(b).
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The largest value over the block and the lowest id holding it; every thread receives them.
__device__ void block_argmax(float& value, int& id, float* smem_v, int* smem_i) {
  auto better = [](float v2, int i2, float v, int i) { return v2 > v || (v2 == v && i2 < i); };
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, value, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, id, o);
    if (better(v2, i2, value, id)) value = v2, id = i2;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) smem_v[warp] = value, smem_i[warp] = id;
  __syncthreads();
  value = lane < kWarps ? smem_v[lane] : -INFINITY;
  id = lane < kWarps ? smem_i[lane] : INT_MAX;
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(0xffffffffu, value, o);
    const int i2 = __shfl_xor_sync(0xffffffffu, id, o);
    if (better(v2, i2, value, id)) value = v2, id = i2;
  }
}

// Exclusive prefix sum of one value per thread over the block, in thread order, and the total.
// smem: 33 floats.
__device__ float block_exclusive_scan(float v, float* smem, float& total) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float incl = v;
  for (int o = 1; o < 32; o <<= 1) {
    const float y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  float excl = __shfl_up_sync(0xffffffffu, incl, 1);
  if (lane == 0) excl = 0.f;
  __syncthreads();
  if (lane == 31) smem[warp] = incl;
  __syncthreads();
  if (warp == 0) {  // kWarps == 32: one warp total per lane
    float wi = smem[lane];
    for (int o = 1; o < 32; o <<= 1) {
      const float y = __shfl_up_sync(0xffffffffu, wi, o);
      if (lane >= o) wi += y;
    }
    float we = __shfl_up_sync(0xffffffffu, wi, 1);
    if (lane == 0) we = 0.f;
    smem[lane] = we;
    if (lane == 31) smem[32] = wi;
  }
  __syncthreads();
  total = smem[32];
  return smem[warp] + excl;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    sample_kernel(const T* logits, int64_t columns, int vocab, const int32_t* counters, int32_t* out,
                  float temperature, int top_k, float top_p, uint64_t seed) {
  __shared__ float smem_f[33];
  __shared__ int smem_i[kWarps];
  __shared__ int hist[256];
  __shared__ uint32_t chosen_prefix;
  __shared__ int chosen_remaining, chosen_id, last_id;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * columns;
  const int tid = threadIdx.x;

  float best = -INFINITY;
  int best_id = INT_MAX;
  for (int v = tid; v < vocab; v += kThreads) {
    const float l = load(x, v);
    if (l > best) best = l, best_id = v;  // ids grow within a thread: the first maximum stays
  }
  block_argmax(best, best_id, smem_f, smem_i);
  if (temperature == 0.f) {
    if (tid == 0) out[row] = best_id == INT_MAX ? 0 : best_id;
    return;
  }
  const float max_s = best / temperature;
  auto score = [&](int v) { return load(x, v) / temperature; };

  // top-k: the key of the k-th largest score, 8 bits at a time from the top.
  uint32_t threshold = 0;
  if (top_k > 0 && top_k < vocab) {
    uint32_t prefix = 0, mask = 0;
    int remaining = top_k;
    for (int shift = 24; shift >= 0; shift -= 8) {
      for (int i = tid; i < 256; i += kThreads) hist[i] = 0;
      __syncthreads();
      for (int v = tid; v < vocab; v += kThreads) {
        const uint32_t key = order_key(score(v));
        if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
      }
      __syncthreads();
      if (tid == 0) {
        int above = 0;
        for (int bin = 255; bin >= 0; --bin) {
          if (above + hist[bin] >= remaining) {
            chosen_prefix = prefix | (uint32_t(bin) << shift);
            chosen_remaining = remaining - above;
            break;
          }
          above += hist[bin];
        }
      }
      __syncthreads();
      prefix = chosen_prefix;
      remaining = chosen_remaining;
      mask |= 0xFFu << shift;
    }
    threshold = prefix;
  }
  auto kept_mass = [&](uint32_t key_min) {
    float m = 0.f;
    for (int v = tid; v < vocab; v += kThreads) {
      const float s = score(v);
      if (order_key(s) >= key_min) m += expf(s - max_s);
    }
    return block_sum(m, smem_f);
  };
  // top-p: the largest key whose kept mass still reaches top_p of the top-k mass.
  if (top_p < 1.f) {
    const float target = top_p * kept_mass(threshold);
    uint32_t lo = threshold, hi = order_key(max_s);
    while (lo < hi) {
      const uint32_t mid = lo + uint32_t((uint64_t(hi) - lo + 1) / 2);
      if (kept_mass(mid) >= target) lo = mid;
      else hi = mid - 1;
    }
    threshold = lo;
  }

  // The draw: contiguous id ranges per thread, in id order.
  const int per_thread = (vocab + kThreads - 1) / kThreads;
  const int v0 = min(vocab, tid * per_thread), v1 = min(vocab, v0 + per_thread);
  float local = 0.f;
  int local_last = -1;
  for (int v = v0; v < v1; ++v) {
    const float s = score(v);
    if (order_key(s) >= threshold) local += expf(s - max_s), local_last = v;
  }
  if (tid == 0) chosen_id = INT_MAX, last_id = -1;
  float total = 0.f;
  const float before = block_exclusive_scan(local, smem_f, total);  // syncs after the writes above
  atomicMax(&last_id, local_last);
  const PhiloxWords r = philox4x32_10({{uint32_t(counters[row]), uint32_t(row), 0u, 0u}}, seed);
  const float target = philox_unit(r.w[0]) * total;
  if (local > 0.f && before <= target && target < before + local) {
    const float inside = target - before;
    float running = 0.f;
    int pick = local_last;
    for (int v = v0; v < v1; ++v) {
      const float s = score(v);
      if (order_key(s) < threshold) continue;
      running += expf(s - max_s);
      if (running > inside) {
        pick = v;
        break;
      }
    }
    atomicMin(&chosen_id, pick);
  }
  __syncthreads();
  if (tid == 0) out[row] = chosen_id != INT_MAX ? chosen_id : max(last_id, 0);
}

}  // namespace

void sample_tokens(const Tensor& logits, const Tensor& counters, const SamplingOptions& o, const Tensor& out) {
  const int64_t batch = logits.size(0), columns = logits.size(1);
  const int vocab = int(o.vocab > 0 ? o.vocab : columns);
  const int top_k = int(std::min<int64_t>(o.top_k, vocab));
  dispatch_gpu_float("sample_tokens", logits, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    sample_kernel<T><<<unsigned(batch), kThreads, 0, coil::cuda::compute_stream()>>>(
        static_cast<const T*>(logits.raw()), columns, vocab, counters.data<int32_t>(), out.data<int32_t>(),
        float(o.temperature), top_k, float(o.top_p), o.seed);
  });
  COIL_CUDA_CHECK_LAUNCH("sample_tokens", "logits {}, temperature {}, top_k {}, top_p {}", describe(logits),
                         o.temperature, o.top_k, o.top_p);
}

}  // namespace coil::kernels::cuda
