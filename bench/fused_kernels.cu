// Achieved bandwidth of the fused kernels at the sizes of a Mamba-130M training step with
// 16 x 2048 tokens (d_model 768, vocabulary 50280): add+RMSNorm forward and backward, layer
// norm forward and backward, SwiGLU forward and backward (Transformer++ 125M's MLP, hidden 2048;
// with the unfused ops it replaced), RoPE forward and backward on Transformer++ 125M's packed
// qkv (3 x 12 heads of 64: q and k rotated, v copied), softmax forward and backward and the
// cross-entropy pass over a 4096-row chunk of logits (the fused linear cross-entropy's chunk),
// AdamW over the 130M parameters and the global gradient norm. Each line gives the bytes the
// kernel must move (its DRAM floor: every input read once, every output written once), the
// median time and that traffic over the time, as a fraction of the measured device-to-device
// copy bandwidth (cudaMemcpyAsync, bytes read plus written). Traffic a kernel pays beyond that floor (the norm
// backward's per-block partial sums of dweight and dbias, rows re-read past the shared-memory
// cache) is not counted: it shows as a lower fraction.
// Timing: CUDA events on the compute stream around kInner back-to-back calls (as in a training
// step, the host enqueues ahead of the GPU), warm-up first, median of the repetitions.
// Usage: bench_fused_kernels [repetitions (default 20)]
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/cuda.h"
#include "bench/bench_util.cuh"
#include "core/tensor.h"
#include "kernels/adamw.h"
#include "kernels/elementwise.h"
#include "kernels/layout.h"
#include "kernels/loss.h"
#include "kernels/norm.h"
#include "kernels/rope.h"
#include "kernels/softmax.h"

using namespace coil;

namespace {

constexpr int kInner = 10;  // calls per timed repetition

Tensor random(const Shape& shape, DType dtype, uint32_t seed, float scale = 1.f) {
  return bench::random_uniform(shape, dtype, -scale, scale, seed);
}


double copy_bw = 0;  // GB/s

void report(const char* name, double bytes, double ms) {
  double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("%-44s %9.1f MB %9.3f ms %8.0f GB/s %6.1f%%\n", name, bytes / 1e6, ms, gbs, 100.0 * gbs / copy_bw);
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  const int warmup = 3;
  COIL_CHECK(cuda_available(), "bench_fused_kernels: {}", cuda_unavailable_reason());
  const Device gpu = Device::cuda(0);
  const int64_t T = 16 * 2048, d = 768, V = 50280, chunk = 4096;
  cudaDeviceProp prop;
  COIL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s; tokens %lld, d_model %lld, vocabulary %lld, chunk %lld rows, median of %d\n", prop.name,
              (long long)T, (long long)d, (long long)V, (long long)chunk, reps);

  {  // copy bandwidth: 1 GiB device to device
    const size_t bytes = size_t(1) << 30;
    Tensor b = Tensor::empty({int64_t(bytes / 4)}, DType::i32, gpu);
    Tensor src = Tensor::zeros({int64_t(bytes / 4)}, DType::i32, gpu);
    double ms = bench::median_ms([&] { cuda::memcpy_device_to_device(b.raw(), src.raw(), bytes); }, reps, warmup, kInner);
    copy_bw = 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
    std::printf("%-44s %9.1f MB %9.3f ms %8.0f GB/s %6.1f%%\n", "device-to-device copy (read + write)", 2e-6 * double(bytes),
                ms, copy_bw, 100.0);
  }
  std::printf("%-44s %12s %12s %13s %7s\n", "kernel", "traffic", "median", "achieved", "of copy");

  const double n = double(T * d);
  {  // add + RMSNorm: x bf16, residual f32 in, residual f32 out, y bf16
    Tensor x = random({T, d}, DType::bf16, 1), res = random({T, d}, DType::f32, 2), w = random({d}, DType::f32, 3);
    kernels::NormForward f;
    double ms = bench::median_ms([&] { f = kernels::norm_forward(x, res, w, Tensor(), 1e-5, true, true); }, reps, warmup, kInner);
    report("add+rms_norm forward (bf16, fp32 residual)", n * (2 + 4 + 4 + 2), ms);
    Tensor dy = random({T, d}, DType::bf16, 4), dres = random({T, d}, DType::f32, 5);
    ms = bench::median_ms([&] { kernels::norm_backward(dy, f.residual, f.mean, f.rstd, w, false, dres, DType::bf16, true, true); },
                   warmup, reps);
    report("add+rms_norm backward", n * (2 + 4 + 4 + 2 + 4), ms);
  }
  {  // layer norm, bf16 in and out
    Tensor x = random({T, d}, DType::bf16, 6), w = random({d}, DType::bf16, 7), b = random({d}, DType::bf16, 8);
    kernels::NormForward f;
    double ms = bench::median_ms([&] { f = kernels::norm_forward(x, Tensor(), w, b, 1e-5, false, false); }, reps, warmup, kInner);
    report("layer_norm forward (bf16)", n * (2 + 2), ms);
    Tensor dy = random({T, d}, DType::bf16, 9);
    ms = bench::median_ms([&] { kernels::norm_backward(dy, x, f.mean, f.rstd, w, true, Tensor(), DType::bf16, false, false); },
                   warmup, reps);
    report("layer_norm backward (bf16)", n * (2 + 2 + 2), ms);
  }
  {  // SwiGLU on Transformer++ 125M's fused up-projection (hidden 2048), bf16; beside it the
     // unfused ops it replaces (split copies, silu, product; backward: two products, silu's
     // backward and the concat of the halves' gradients), their traffic counted the same way
    const int64_t hidden = 2048;
    const double nh = double(T * hidden);
    Tensor h = random({T, 2 * hidden}, DType::bf16, 20), g = random({T, hidden}, DType::bf16, 21);
    double ms = bench::median_ms([&] { kernels::swiglu(h); }, reps, warmup, kInner);
    report("swiglu forward [32768, 2 x 2048] bf16", nh * 3 * 2, ms);
    ms = bench::median_ms([&] { kernels::swiglu_backward(g, h); }, reps, warmup, kInner);
    report("swiglu backward", nh * 5 * 2, ms);
    ms = bench::median_ms([&] {
      std::vector<Tensor> ag = kernels::split(h, {hidden, hidden}, 1);
      kernels::mul(ag[0], kernels::silu(ag[1]));
    }, reps, warmup, kInner);
    report("  unfused: split + silu + mul", nh * 9 * 2, ms);
    std::vector<Tensor> halves = kernels::split(h, {hidden, hidden}, 1);
    Tensor silu_gate = kernels::silu(halves[1]);  // saved by the unfused forward
    ms = bench::median_ms([&] {
      Tensor da = kernels::mul(g, silu_gate);
      Tensor dg = kernels::unary_backward(kernels::UnaryOp::silu, kernels::mul(g, halves[0]), halves[1]);
      kernels::concat({da, dg}, 1);
    }, reps, warmup, kInner);
    report("  unfused backward: 2 mul + silu' + concat", nh * 13 * 2, ms);
  }
  {  // RoPE on Transformer++ 125M's packed qkv (B 16, T 2048, 3 x 12 heads of 64), bf16
    Tensor qkv = random({16, 2048, 3, 12, 64}, DType::bf16, 22);
    const double bytes = double(qkv.numel()) * (2 + 2);
    double ms = bench::median_ms([&] { kernels::rope(qkv); }, reps, warmup, kInner);
    report("rope forward [16, 2048, 3, 12, 64] bf16", bytes, ms);
    ms = bench::median_ms([&] { kernels::rope_backward(qkv); }, reps, warmup, kInner);
    report("rope backward", bytes, ms);
  }
  const double nv = double(chunk * V);
  {  // softmax over a chunk of logits
    Tensor x = random({chunk, V}, DType::bf16, 10, 4.f);
    Tensor y;
    double ms = bench::median_ms([&] { y = kernels::softmax_forward(x); }, reps, warmup, kInner);
    report("softmax forward [4096, 50280] bf16", nv * (2 + 2), ms);
    Tensor dy = random({chunk, V}, DType::bf16, 11);
    ms = bench::median_ms([&] { kernels::softmax_backward(dy, y); }, reps, warmup, kInner);
    report("softmax backward", nv * (2 + 2 + 2), ms);
  }
  {  // cross-entropy over a chunk: loss alone, and loss + in-place logit gradient (the fused pass)
    Tensor logits = random({chunk, V}, DType::bf16, 12, 4.f);
    std::vector<int64_t> t(static_cast<size_t>(chunk));
    for (int64_t i = 0; i < chunk; ++i) t[size_t(i)] = (i * 7919) % V;
    Tensor targets = Tensor::from_vector(t, {chunk}, DType::i64, gpu);
    Tensor count = kernels::cross_entropy_count(targets, -100, V, DType::f32);
    Tensor row_loss = Tensor::empty({chunk}, DType::f32, gpu), lse = Tensor::empty({chunk}, DType::f32, gpu);
    double ms = bench::median_ms([&] {
      kernels::cuda::cross_entropy_rows(logits, targets, -100, 0, count, Tensor(), lse, false, row_loss, Tensor());
    }, reps, warmup, kInner);
    report("cross_entropy forward (loss only)", nv * 2, ms);
    ms = bench::median_ms([&] {
      kernels::cuda::cross_entropy_rows(logits, targets, -100, 0, count, Tensor(), Tensor(), false, row_loss, logits);
    }, reps, warmup, kInner);
    report("cross_entropy fused loss + grad in place", nv * (2 + 2), ms);
    kernels::check_cross_entropy_targets(gpu);
  }
  {  // AdamW and the gradient norm over Mamba-130M's parameters
    std::vector<Shape> shapes = {{V, d}};
    for (int layer = 0; layer < 24; ++layer)
      for (Shape s : std::vector<Shape>{{3072, 768}, {1536, 1, 4}, {1536}, {80, 1536}, {1536, 48}, {1536}, {1536, 16},
                                        {1536}, {768, 1536}, {768}})
        shapes.push_back(s);
    shapes.push_back({d});
    std::vector<kernels::AdamWSlot> slots;
    int64_t total = 0;
    uint32_t seed = 100;
    for (const Shape& s : shapes) {
      kernels::AdamWSlot slot;
      slot.param = random(s, DType::f32, seed++, 0.02f);
      slot.grad = random(s, DType::f32, seed++, 1e-3f);
      slot.m = Tensor::zeros(s, DType::f32, gpu);
      slot.v = Tensor::zeros(s, DType::f32, gpu);
      slot.copy = Tensor::empty(s, DType::bf16, gpu);
      slot.weight_decay = s.size() > 1 ? 0.1 : 0.0;
      total += slot.param.numel();
      slots.push_back(slot);
    }
    kernels::MultiTensorPlan plan = kernels::make_multi_tensor_plan(slots);
    Tensor lr = Tensor::scalar(1e-4, DType::f32, gpu);
    kernels::GradNorm gn = kernels::grad_norm(plan, 1.0);
    int64_t step = 0;
    double ms = bench::median_ms([&] { kernels::adamw_step(plan, lr, gn.clip, {0.9, 0.95, 1e-8}, ++step); }, reps, warmup, kInner);
    char name[96];
    std::snprintf(name, sizeof(name), "adamw, %zu tensors, %.1fM params", slots.size(), total / 1e6);
    report(name, double(total) * (16 + 12 + 2), ms);
    ms = bench::median_ms([&] { kernels::grad_norm(plan, 1.0); }, reps, warmup, kInner);
    report("global grad norm + clip coefficient", double(total) * 4, ms);
  }
  MemoryStats stats = memory_stats(gpu);
  std::printf("peak GPU memory in use: %s\n", format_bytes(stats.peak_in_use).c_str());
  return 0;
}
