#include "core/cuda.h"
#include "kernels/cuda/block_reduce.cuh"
#include "kernels/adamw.h"

namespace coil::kernels::cuda {
namespace {

// One slot as the kernels read it (built on the host, copied to the device once per plan).
struct alignas(8) DeviceSlot {
  float* param;
  const void* grad;
  float* m;
  float* v;
  bf16_t* copy;
  int64_t numel;
  float weight_decay;
  int32_t grad_bf16;
};

static_assert(sizeof(DeviceSlot) % 4 == 0, "the table is stored as i32 words");

constexpr int kThreads = 512;
constexpr int kUnroll = 4;  // independent elements in flight per thread

__device__ __forceinline__ float load_grad(const DeviceSlot& s, int64_t i) {
  return s.grad_bf16 ? load(static_cast<const bf16_t*>(s.grad), i) : load(static_cast<const float*>(s.grad), i);
}

// One block per (slot, chunk of 65536 elements). Per element: read p, g, m, v (16 bytes with
// f32 gradients), write p, m, v (12) and the bf16 copy (2): ~30 bytes, the update's floor.
// lr and clip are read from device memory (no host sync for schedules or clipping).
__global__ void adamw_kernel(const DeviceSlot* slots, const int2* chunks, const float* lr_ptr,
                             const float* clip_ptr, float beta1, float beta2, float eps,
                             float inv_bc1, float inv_bc2_sqrt) {
  const int2 c = chunks[blockIdx.x];
  const DeviceSlot s = slots[c.x];
  const int64_t begin = int64_t(c.y) * kMultiTensorChunk;
  const int64_t end = min(s.numel, begin + kMultiTensorChunk);
  const float lr = *lr_ptr, clip = clip_ptr ? *clip_ptr : 1.f;
  const float decay = 1.f - lr * s.weight_decay, step_size = lr * inv_bc1;
  for (int64_t base = begin + threadIdx.x; base < end; base += int64_t(kThreads) * kUnroll) {
    float p[kUnroll], g[kUnroll], m[kUnroll], v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + u * kThreads;
      if (i < end) {
        p[u] = s.param[i];
        g[u] = load_grad(s, i);
        m[u] = s.m[i];
        v[u] = s.v[i];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      int64_t i = base + u * kThreads;
      if (i < end) {
        float gu = g[u] * clip;
        float mu = beta1 * m[u] + (1.f - beta1) * gu;
        float vu = beta2 * v[u] + (1.f - beta2) * gu * gu;
        float pu = p[u] * decay;
        pu -= step_size * mu / (sqrtf(vu) * inv_bc2_sqrt + eps);
        s.param[i] = pu;
        s.m[i] = mu;
        s.v[i] = vu;
        if (s.copy) store(s.copy, i, pu);
      }
    }
  }
}

// Pass 1 of the norm: partial[chunk] = sum of grad^2 over the chunk (fixed order inside the
// block). Reads the gradients once (4 or 2 bytes per element).
__global__ void sumsq_kernel(const DeviceSlot* slots, const int2* chunks, float* partial) {
  __shared__ float smem[32];
  const int2 c = chunks[blockIdx.x];
  const DeviceSlot s = slots[c.x];
  const int64_t begin = int64_t(c.y) * kMultiTensorChunk;
  const int64_t end = min(s.numel, begin + kMultiTensorChunk);
  float acc = 0.f;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    float g = load_grad(s, i);
    acc += g * g;
  }
  acc = block_sum(acc, smem);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// Pass 2: one block sums the partials in a fixed order (in double) and writes the total.
__global__ void sumsq_finish_kernel(const float* partial, int n, double* total_out) {
  __shared__ double smem[32];
  double acc = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
  acc = warp_sum(acc);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) total += smem[w];
    *total_out = total;
  }
}

// norm = sqrt(sum of squares) and the clipping coefficient: one thread, two scalars.
__global__ void norm_clip_kernel(const double* sumsq, float max_norm, float* norm_out, float* clip_out) {
  float norm = float(sqrt(*sumsq));
  *norm_out = norm;
  float clip = 1.f;
  if (max_norm > 0.f) clip = isfinite(norm) ? fminf(1.f, max_norm / (norm + 1e-6f)) : NAN;
  *clip_out = clip;
}

// grad *= s: read and write the gradients once.
__global__ void scale_kernel(const DeviceSlot* slots, const int2* chunks, const float* s_ptr) {
  const int2 c = chunks[blockIdx.x];
  const DeviceSlot s = slots[c.x];
  const int64_t begin = int64_t(c.y) * kMultiTensorChunk;
  const int64_t end = min(s.numel, begin + kMultiTensorChunk);
  const float f = *s_ptr;
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) {
    if (s.grad_bf16) {
      bf16_t* g = static_cast<bf16_t*>(const_cast<void*>(s.grad));
      store(g, i, to_f(g[i]) * f);
    } else {
      float* g = static_cast<float*>(const_cast<void*>(s.grad));
      g[i] *= f;
    }
  }
}

const DeviceSlot* table_of(const MultiTensorPlan& plan) { return static_cast<const DeviceSlot*>(plan.table.raw()); }
const int2* chunks_of(const MultiTensorPlan& plan) { return static_cast<const int2*>(plan.chunks.raw()); }

}  // namespace

void upload_plan(MultiTensorPlan& plan) {
  std::vector<DeviceSlot> table;
  std::vector<int32_t> chunks;
  for (size_t i = 0; i < plan.slots.size(); ++i) {
    const AdamWSlot& s = plan.slots[i];
    DeviceSlot d{};
    d.param = s.param.defined() ? s.param.data<float>() : nullptr;
    d.grad = s.grad.raw();
    d.m = s.m.defined() ? s.m.data<float>() : nullptr;
    d.v = s.v.defined() ? s.v.data<float>() : nullptr;
    d.copy = s.copy.defined() ? static_cast<bf16_t*>(s.copy.raw()) : nullptr;
    d.numel = s.grad.numel();
    d.weight_decay = float(s.weight_decay);
    d.grad_bf16 = s.grad.dtype() == DType::bf16;
    table.push_back(d);
    const int64_t n = (d.numel + kMultiTensorChunk - 1) / kMultiTensorChunk;
    COIL_CHECK(n < (int64_t(1) << 31), "adamw: parameter {} has too many elements ({})", i, d.numel);
    for (int64_t k = 0; k < n; ++k) {
      chunks.push_back(int32_t(i));
      chunks.push_back(int32_t(k));
    }
  }
  COIL_CHECK(plan.num_chunks < (int64_t(1) << 31), "adamw: {} chunks exceed the grid", plan.num_chunks);
  plan.table = Tensor::empty({int64_t(table.size() * sizeof(DeviceSlot) / 4)}, DType::i32, plan.device);
  coil::cuda::memcpy_host_to_device(plan.table.raw(), table.data(), table.size() * sizeof(DeviceSlot));
  plan.chunks = Tensor::empty({plan.num_chunks, 2}, DType::i32, plan.device);
  coil::cuda::memcpy_host_to_device(plan.chunks.raw(), chunks.data(), chunks.size() * sizeof(int32_t));
}

void adamw_step(const MultiTensorPlan& plan, const Tensor& lr, const Tensor& clip, const AdamWHyper& h,
                int64_t step) {
  const float inv_bc1 = float(1.0 / (1.0 - std::pow(h.beta1, double(step))));
  const float inv_bc2_sqrt = float(1.0 / std::sqrt(1.0 - std::pow(h.beta2, double(step))));
  adamw_kernel<<<unsigned(plan.num_chunks), kThreads, 0, coil::cuda::compute_stream()>>>(
      table_of(plan), chunks_of(plan), lr.data<float>(), clip.defined() ? clip.data<float>() : nullptr,
      float(h.beta1), float(h.beta2), float(h.eps), inv_bc1, inv_bc2_sqrt);
  COIL_CUDA_CHECK_LAUNCH("adamw", "{} parameters, {} elements, step {}", plan.slots.size(), plan.numel, step);
}

void grad_sumsq(const MultiTensorPlan& plan, const Tensor& out) {
  Tensor partial = Tensor::empty({plan.num_chunks}, DType::f32, plan.device);
  cudaStream_t stream = coil::cuda::compute_stream();
  sumsq_kernel<<<unsigned(plan.num_chunks), kThreads, 0, stream>>>(table_of(plan), chunks_of(plan),
                                                                    partial.data<float>());
  COIL_CUDA_CHECK_LAUNCH("grad_sumsq_partial", "{} parameters, {} elements", plan.slots.size(), plan.numel);
  sumsq_finish_kernel<<<1, 1024, 0, stream>>>(partial.data<float>(), int(plan.num_chunks), out.data<double>());
  COIL_CUDA_CHECK_LAUNCH("grad_sumsq_finish", "{} chunks", plan.num_chunks);
}

void norm_and_clip(const Tensor& sumsq, double max_norm, const GradNorm& out) {
  norm_clip_kernel<<<1, 1, 0, coil::cuda::compute_stream()>>>(sumsq.data<double>(), float(max_norm),
                                                               out.norm.data<float>(), out.clip.data<float>());
  COIL_CUDA_CHECK_LAUNCH("norm_and_clip", "max_norm {}", max_norm);
}

void scale_grads(const MultiTensorPlan& plan, const Tensor& s) {
  scale_kernel<<<unsigned(plan.num_chunks), kThreads, 0, coil::cuda::compute_stream()>>>(
      table_of(plan), chunks_of(plan), s.data<float>());
  COIL_CUDA_CHECK_LAUNCH("scale_grads", "{} parameters", plan.slots.size());
}

}  // namespace coil::kernels::cuda
