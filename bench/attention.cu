// Causal flash attention, bf16, on one GPU: forward and forward+backward times (median of
// CUDA-event timings after warm-up) and TFLOP/s, with causal FLOPs
//   forward 4 * B * H * T^2 * hd / 2,  backward 2.5 x forward.
// Each shape is timed with the portable kernels (mma.sync, kernels/cuda/attention.cu) and,
// where they run (an sm_90 GPU, a build for sm_90a; hd 64, 96 and 128), the Hopper kernels (wgmma,
// TMA: kernels/cuda/attention_hopper.cu, the forward, and attention_hopper_backward.cu, dK/dV
// and dQ), rows "portable" and "hopper": both directions switch together, so the "bwd" columns
// (f+b minus fwd) compare the two backwards side by side.
// Usage: bench_attention [iterations] [--tune]; --tune also times the other launch settings
// of the portable kernels "fwd warps, fwd rows per warp, dK/dV warps, dQ warps"
// (kernels::AttentionLaunch). Compare with bench/attention_torch.py (PyTorch SDPA).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/bench_util.cuh"
#include "core/cuda.h"
#include "core/random.h"
#include "kernels/attention.h"

using namespace coil;

using bench::median_ms;

namespace {

struct Case {
  int64_t B, H, T, d, window;
};

// Times forward and forward+backward of one shape with the current settings; prints one row.
void time_case(const Case& c, const std::string& label, const Tensor& q, const Tensor& k, const Tensor& v,
               const Tensor& g, int iters) {
  kernels::AttentionOptions o;
  o.window = c.window;
  kernels::AttentionOutput r;
  double fwd = median_ms([&] { r = kernels::attention_forward(q, k, v, o); }, iters);
  double fb = median_ms(
      [&] {
        kernels::AttentionOutput f = kernels::attention_forward(q, k, v, o);
        kernels::AttentionGrads d = kernels::attention_backward(g, q, k, v, f.out, f.lse, o);
      },
      iters);
  double flops = 4.0 * c.B * c.H * double(c.T) * c.T * c.d / 2;
  if (c.window > 0) {  // visible pairs: sum over t of min(t + 1, window)
    double pairs = 0;
    for (int64_t t = 0; t < c.T; ++t) pairs += double(std::min<int64_t>(t + 1, c.window));
    flops = 4.0 * c.B * c.H * pairs * c.d;
  }
  char name[96];
  std::snprintf(name, sizeof name, "B%ld H%ld T%ld d%ld%s%s", long(c.B), long(c.H), long(c.T),
                long(c.d), c.window ? " w512" : "", label.c_str());
  std::printf("%-44s %10.3f %10.1f %10.3f %10.1f %10.3f %10.1f\n", name, fwd, flops / fwd * 1e-9, fb,
              3.5 * flops / fb * 1e-9, fb - fwd, 2.5 * flops / (fb - fwd) * 1e-9);
  std::fflush(stdout);
}

// The forward and the backward kernels both.
void set_kernels(kernels::AttentionKernel kernel) {
  kernels::set_attention_forward_kernel(kernel);
  kernels::set_attention_backward_kernel(kernel);
}

}  // namespace

int main(int argc, char** argv) {
  int iters = argc > 1 ? std::atoi(argv[1]) : 20;
  bool tune = argc > 2 && std::string(argv[2]) == "--tune";
  if (!cuda_available()) {
    std::printf("bench_attention: no GPU (%s)\n", cuda_unavailable_reason().c_str());
    return 0;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, coil::cuda::current_device());
  std::printf("device: %s\n", prop.name);
  std::fflush(stdout);
  std::vector<Case> cases = {{16, 12, 2048, 64, 0}, {4, 12, 8192, 64, 0}, {8, 16, 2048, 128, 0},
                             {8, 16, 2048, 96, 0}, {16, 12, 2048, 64, 512}};
  std::printf("%-44s %10s %10s %10s %10s %10s %10s\n", "shape (causal, bf16), kernels", "fwd ms",
              "fwd TF/s", "f+b ms", "f+b TF/s", "bwd ms", "bwd TF/s");
  // The settings in use (defaults or the environment's) unlabelled; --tune: each of these.
  const kernels::AttentionLaunch initial = kernels::attention_launch();
  std::vector<kernels::AttentionLaunch> variants = {initial};
  if (tune) variants = {{4, 16, 4, 4}, {8, 16, 4, 4}, {4, 32, 4, 4}, {4, 16, 8, 4}, {4, 16, 4, 8}, {8, 16, 8, 8}};
  for (const Case& c : cases) {
    // Inputs drawn once per shape (on the host: seconds at the largest shape).
    Generator gen(1);
    Shape s{c.B, c.T, c.H, c.d};
    Device gpu = Device::cuda();
    Tensor q = randn(s, gen, DType::bf16, gpu), k = randn(s, gen, DType::bf16, gpu),
           v = randn(s, gen, DType::bf16, gpu), g = randn(s, gen, DType::bf16, gpu);
    set_kernels(kernels::AttentionKernel::portable);
    for (const kernels::AttentionLaunch& variant : variants) {
      kernels::set_attention_launch(variant);
      std::string label = " portable";
      if (tune)
        label += " " + std::to_string(variant.fwd_warps) + "," + std::to_string(variant.fwd_rows) + "," +
                 std::to_string(variant.dkdv_warps) + "," + std::to_string(variant.dq_warps);
      time_case(c, label, q, k, v, g, iters);
    }
    kernels::set_attention_launch(initial);
    const std::string why = kernels::attention_hopper_unsupported(c.d);
    if (!why.empty()) {
      std::printf("%-44s not timed: %s\n", " hopper", why.c_str());
      continue;
    }
    set_kernels(kernels::AttentionKernel::hopper);
    time_case(c, " hopper", q, k, v, g, iters);
  }
  return 0;
}
