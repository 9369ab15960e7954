// Helpers the benchmark programs share: device-side pseudo-random fills (no host round trip
// for hundreds of MB of inputs), CUDA-event timing on the compute stream, and the measured
// device-to-device copy bandwidth that kernels are compared against.
#pragma once
#include <cuda_bf16.h>

#include <algorithm>
#include <vector>

#include "core/cuda.h"
#include "core/tensor.h"

namespace coil::bench {

// A uniform value in [0, 1) from a hash of (index, seed).
__device__ inline float hash_uniform(uint64_t i, uint32_t seed) {
  uint32_t x = uint32_t(i) * 2654435761u ^ (uint32_t(i >> 32) + seed) * 2246822519u;
  x ^= x >> 15;
  x *= 2246822519u;
  x ^= x >> 13;
  x *= 3266489917u;
  x ^= x >> 16;
  return (x >> 8) * (1.0f / 16777216.0f);
}

template <class T>
__global__ void fill_uniform_kernel(T* p, int64_t n, float lo, float hi, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = T(lo + (hi - lo) * hash_uniform(uint64_t(i), seed));
}

// A tensor on the current GPU, f32 or bf16, uniform in [lo, hi), the same for the same seed.
inline Tensor random_uniform(const Shape& shape, DType dtype, float lo, float hi, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dtype, Device::cuda(cuda::current_device()));
  if (dtype == DType::bf16)
    fill_uniform_kernel<<<4096, 256, 0, cuda::compute_stream()>>>(static_cast<__nv_bfloat16*>(t.raw()), t.numel(), lo,
                                                                  hi, seed);
  else
    fill_uniform_kernel<<<4096, 256, 0, cuda::compute_stream()>>>(t.data<float>(), t.numel(), lo, hi, seed);
  COIL_CUDA_CHECK(cudaGetLastError());
  return t;
}

// Median milliseconds per call of f: `warmup` untimed calls, then `reps` repetitions, each
// timed with CUDA events on the compute stream around `inner` back-to-back calls (inner > 1
// lets the host enqueue ahead of the GPU, as in a training step, so launch gaps do not count).
template <class F>
double median_ms(F&& f, int reps, int warmup = 3, int inner = 1) {
  cudaStream_t stream = cuda::compute_stream();
  for (int i = 0; i < warmup; ++i) f();
  cudaEvent_t start, stop;
  COIL_CUDA_CHECK(cudaEventCreate(&start));
  COIL_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int i = 0; i < std::max(reps, 1); ++i) {
    COIL_CUDA_CHECK(cudaEventRecord(start, stream));
    for (int j = 0; j < inner; ++j) f();
    COIL_CUDA_CHECK(cudaEventRecord(stop, stream));
    COIL_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    COIL_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(double(ms) / inner);
  }
  COIL_CUDA_CHECK(cudaEventDestroy(start));
  COIL_CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Device-to-device copy bandwidth in GB/s, bytes read plus written (cudaMemcpyAsync of `bytes`).
inline double copy_bandwidth_gbs(size_t bytes, int reps) {
  const Device gpu = Device::cuda(cuda::current_device());
  Tensor src = Tensor::zeros({int64_t(bytes / 4)}, DType::f32, gpu);
  Tensor dst = Tensor::empty({int64_t(bytes / 4)}, DType::f32, gpu);
  double ms = median_ms([&] { cuda::memcpy_device_to_device(dst.raw(), src.raw(), bytes); }, reps);
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

}  // namespace coil::bench
