// Sinusoidal positions on the GPU (kernels/positions.h): one thread per element out[s, j] =
// sinusoidal_position(positions[s], j, d), the CPU reference's double formula, rounded once
// to T. Memory: writes out once (n * d * sizeof(T) bytes) and reads each position once per
// element (from L1/L2: d consecutive threads share it); the double pow, sin and cos cost a few
// hundred FLOPs an element, well under a millisecond for 2^20 positions of width 128.
#include "core/cuda.h"
#include "kernels/cuda/float_access.cuh"
#include "kernels/positions.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <class T, class P>
__global__ void sinusoidal_kernel(const P* __restrict__ positions, int64_t n, int64_t d, T* __restrict__ out) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= n * d) return;
  const int64_t s = idx / d, j = idx - s * d;
  out[idx] = from_f<T>(float(sinusoidal_position(int64_t(positions[s]), j, d)));
}

template <class T, class P>
void launch(const Tensor& positions, const Tensor& out) {
  const int64_t n = positions.numel(), d = out.size(-1);
  const int64_t blocks = (n * d + kThreads - 1) / kThreads;
  COIL_CHECK(blocks < (int64_t(1) << 31), "sinusoidal_positions: {} exceeds the CUDA grid", describe(out));
  sinusoidal_kernel<T, P><<<unsigned(blocks), kThreads, 0, coil::cuda::compute_stream()>>>(
      static_cast<const P*>(positions.raw()), n, d, static_cast<T*>(out.raw()));
}

}  // namespace

void sinusoidal_positions(const Tensor& positions, const Tensor& out) {
  dispatch_gpu_float("sinusoidal_positions", out, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    if (positions.dtype() == DType::i32) launch<T, int32_t>(positions, out);
    else launch<T, int64_t>(positions, out);
  });
  COIL_CUDA_CHECK_LAUNCH("sinusoidal_positions", "positions {}, out {}", describe(positions), describe(out));
}

}  // namespace coil::kernels::cuda
