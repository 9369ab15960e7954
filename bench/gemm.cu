// bf16 GEMM throughput through coil's cuBLASLt path (kernels::cuda::matmul), at the shapes
// of a Mamba-130M training step with 16 x 2048 tokens (d_model 768, d_inner 1536, dt_rank 48,
// d_state 16, vocabulary 50280 padded), forward and backward products, plus 8192^3; and the
// device-to-device copy bandwidth (cudaMemcpyAsync, counting the bytes read plus written).
// Timing: CUDA events around each call on the compute stream, warm-up first, the median of
// the repetitions. Usage: bench_gemm [repetitions (default 20)]
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/cuda.h"
#include "core/tensor.h"
#include "bench/bench_util.cuh"
#include "kernels/matmul.h"

using namespace coil;

namespace {

struct Case {
  std::string name;
  int64_t M, N, K;
  bool ta, tb, bias;
};

}  // namespace

int main(int argc, char** argv) {
  int reps = argc > 1 ? std::atoi(argv[1]) : 20;
  if (!cuda_available()) {
    std::printf("bench_gemm: no CUDA device (%s)\n", cuda_unavailable_reason().c_str());
    return 1;
  }
  cudaDeviceProp prop{};
  COIL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, %.1f GiB\n", prop.name, prop.multiProcessorCount,
              double(prop.totalGlobalMem) / (1 << 30));
  std::printf("bf16 in/out, fp32 accumulation (cuBLASLt), %d repetitions, median\n\n", reps);

  const int64_t T = 16 * 2048, D = 768, E = 1536, R = 48, N16 = 16, V = 50280;
  // Row-major products as the ops issue them: linear = x @ W^T (tb), its backward dX = G @ W
  // and dW = G^T @ X (ta).
  std::vector<Case> cases = {
      {"in_proj fwd    x[T,768] W[3072,768]^T", T, 2 * E, D, false, true, false},
      {"in_proj dX     G[T,3072] W[3072,768]", T, D, 2 * E, false, false, false},
      {"in_proj dW     G^T[3072,T] x[T,768]", 2 * E, D, T, true, false, false},
      {"x_proj fwd     x[T,1536] W[80,1536]^T", T, R + 2 * N16, E, false, true, false},
      {"dt_proj fwd    x[T,48] W[1536,48]^T +b", T, E, R, false, true, true},
      {"out_proj fwd   x[T,1536] W[768,1536]^T", T, D, E, false, true, false},
      {"out_proj dX    G[T,768] W[768,1536]", T, E, D, false, false, false},
      {"out_proj dW    G^T[768,T] x[T,1536]", D, E, T, true, false, false},
      {"mlp-like fwd   x[T,768] W[1536,768]^T +b", T, E, D, false, true, true},
      {"plain NN       x[T,768] @ B[768,1536]", T, E, D, false, false, false},
      {"lm_head fwd    x[T,768] W[50280,768]^T", T, V, D, false, true, false},
      {"lm_head dX     G[T,50280] W[50280,768]", T, D, V, false, false, false},
      {"lm_head dW     G^T[50280,T] x[T,768]", V, D, T, true, false, false},
      {"square 8192^3", 8192, 8192, 8192, false, false, false},
  };

  std::printf("| product | M | N | K | time (ms) | TFLOP/s |\n|---|---:|---:|---:|---:|---:|\n");
  for (const Case& c : cases) {
    Tensor a = bench::random_uniform(c.ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, DType::bf16, -1.0f, 1.0f, 1);
    Tensor b = bench::random_uniform(c.tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, DType::bf16, -0.05f, 0.05f, 2);
    Tensor bias = c.bias ? bench::random_uniform({c.N}, DType::bf16, -0.1f, 0.1f, 3) : Tensor();
    Tensor out = Tensor::empty({c.M, c.N}, DType::bf16, Device::cuda(0));
    kernels::GemmShape g;
    g.M = c.M;
    g.N = c.N;
    g.K = c.K;
    g.transpose_a = c.ta;
    g.transpose_b = c.tb;
    double flops = 2.0 * double(c.M) * double(c.N) * double(c.K);
    int r = flops > 2e12 ? std::max(5, reps / 2) : reps;
    double ms = bench::median_ms([&] { kernels::cuda::matmul(a, b, bias, out, g); }, r);
    std::printf("| %s | %lld | %lld | %lld | %.4f | %.1f |\n", c.name.c_str(), (long long)c.M, (long long)c.N,
                (long long)c.K, ms, flops / (ms * 1e-3) / 1e12);
  }

  std::printf("\n| device copy (cudaMemcpyAsync D2D) | bytes | time (ms) | GB/s (read+write) |\n|---|---:|---:|---:|\n");
  for (size_t bytes : {size_t(64) << 20, size_t(256) << 20, size_t(1) << 30}) {
    void* src = device_alloc(Device::cuda(0), bytes);
    void* dst = device_alloc(Device::cuda(0), bytes);
    COIL_CUDA_CHECK(cudaMemsetAsync(src, 1, bytes, cuda::compute_stream()));
    double ms = bench::median_ms([&] { cuda::memcpy_device_to_device(dst, src, bytes); }, reps);
    std::printf("| %zu MiB | %zu | %.4f | %.0f |\n", bytes >> 20, bytes, ms, 2.0 * double(bytes) / (ms * 1e-3) / 1e9);
    device_free(Device::cuda(0), src, bytes);
    device_free(Device::cuda(0), dst, bytes);
  }
  MemoryStats stats = memory_stats(Device::cuda(0));
  std::printf("\nallocator: peak in use %s, reserved %s\n", format_bytes(stats.peak_in_use).c_str(),
              format_bytes(stats.reserved).c_str());
  return 0;
}
