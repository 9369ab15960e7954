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
#include "kernels/matmul.h"

using namespace coil;

namespace {

// Deterministic pseudo-random values in [-1, 1) * scale, written on the device.
__global__ void fill_kernel(__nv_bfloat16* p, int64_t n, float scale, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    p[i] = __float2bfloat16(scale * (float(h & 0xffffff) / float(1 << 23) - 1.0f));
  }
}

Tensor random_bf16(const Shape& shape, uint32_t seed, float scale) {
  Tensor t = Tensor::empty(shape, DType::bf16, Device::cuda(0));
  fill_kernel<<<1024, 256, 0, cuda::compute_stream()>>>(static_cast<__nv_bfloat16*>(t.raw()), t.numel(), scale, seed);
  COIL_CUDA_CHECK(cudaGetLastError());
  return t;
}

// Median milliseconds of `reps` timed calls of f, after `warmup` untimed ones.
template <class F>
double median_ms(F&& f, int warmup, int reps) {
  cudaStream_t stream = cuda::compute_stream();
  for (int i = 0; i < warmup; ++i) f();
  cudaEvent_t start, stop;
  COIL_CUDA_CHECK(cudaEventCreate(&start));
  COIL_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    COIL_CUDA_CHECK(cudaEventRecord(start, stream));
    f();
    COIL_CUDA_CHECK(cudaEventRecord(stop, stream));
    COIL_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    COIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  COIL_CUDA_CHECK(cudaEventDestroy(start));
  COIL_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

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
    Tensor a = random_bf16(c.ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, 1, 1.0f);
    Tensor b = random_bf16(c.tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, 2, 0.05f);
    Tensor bias = c.bias ? random_bf16({c.N}, 3, 0.1f) : Tensor();
    Tensor out = Tensor::empty({c.M, c.N}, DType::bf16, Device::cuda(0));
    kernels::GemmShape g;
    g.M = c.M;
    g.N = c.N;
    g.K = c.K;
    g.transpose_a = c.ta;
    g.transpose_b = c.tb;
    double flops = 2.0 * double(c.M) * double(c.N) * double(c.K);
    int r = flops > 2e12 ? std::max(5, reps / 2) : reps;
    double ms = median_ms([&] { kernels::cuda::matmul(a, b, bias, out, g); }, 3, r);
    std::printf("| %s | %lld | %lld | %lld | %.4f | %.1f |\n", c.name.c_str(), (long long)c.M, (long long)c.N,
                (long long)c.K, ms, flops / (ms * 1e-3) / 1e12);
  }

  std::printf("\n| device copy (cudaMemcpyAsync D2D) | bytes | time (ms) | GB/s (read+write) |\n|---|---:|---:|---:|\n");
  for (size_t bytes : {size_t(64) << 20, size_t(256) << 20, size_t(1) << 30}) {
    void* src = device_alloc(Device::cuda(0), bytes);
    void* dst = device_alloc(Device::cuda(0), bytes);
    COIL_CUDA_CHECK(cudaMemsetAsync(src, 1, bytes, cuda::compute_stream()));
    double ms = median_ms(
        [&] { COIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::compute_stream())); },
        3, reps);
    std::printf("| %zu MiB | %zu | %.4f | %.0f |\n", bytes >> 20, bytes, ms, 2.0 * double(bytes) / (ms * 1e-3) / 1e9);
    device_free(Device::cuda(0), src, bytes);
    device_free(Device::cuda(0), dst, bytes);
  }
  MemoryStats stats = memory_stats(Device::cuda(0));
  std::printf("\nallocator: peak in use %s, reserved %s\n", format_bytes(stats.peak_in_use).c_str(),
              format_bytes(stats.reserved).c_str());
  return 0;
}
