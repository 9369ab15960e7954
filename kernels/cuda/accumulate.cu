#include "core/cuda.h"
#include "kernels/accumulate.h"
#include "kernels/cuda/float_access.cuh"

namespace coil::kernels::cuda {
namespace {

// dst[i] += src[i] with fp32 math, over `units` packs of N elements (16-byte packs when both
// tensors allow them, else N = 1): reads 2n elements and writes n, the floor. Grid-stride.
template <class T, int N>
__global__ void accumulate_kernel(T* dst, const T* src, int64_t units) {
  using P = Pack<T, N>;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units; u += int64_t(gridDim.x) * blockDim.x) {
    P d = reinterpret_cast<const P*>(dst)[u];
    const P s = reinterpret_cast<const P*>(src)[u];
#pragma unroll
    for (int j = 0; j < N; ++j) d.v[j] = from_f<T>(to_f(d.v[j]) + to_f(s.v[j]));
    reinterpret_cast<P*>(dst)[u] = d;
  }
}

template <class T, int N>
void launch(const Tensor& dst, const Tensor& src, int64_t units) {
  const int grid = int(std::min<int64_t>((units + 255) / 256, 8192));
  accumulate_kernel<T, N><<<grid, 256, 0, coil::cuda::compute_stream()>>>(static_cast<T*>(dst.raw()),
                                                                          static_cast<const T*>(src.raw()), units);
}

}  // namespace

void accumulate(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  dispatch_gpu_float("accumulate", dst, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    constexpr int kPack = Pack<T>::n;
    if (n % kPack == 0 && aligned16(dst.raw()) && aligned16(src.raw()))
      launch<T, kPack>(dst, src, n / kPack);
    else
      launch<T, 1>(dst, src, n);
  });
  COIL_CUDA_CHECK_LAUNCH("accumulate", "dst {}, src {}", describe(dst), describe(src));
}

}  // namespace coil::kernels::cuda
