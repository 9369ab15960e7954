#include <cuda_bf16.h>

#include "core/cuda.h"
#include "kernels/accumulate.h"

namespace coil::kernels::cuda {
namespace {

// dst[i] += src[i]: reads 2n elements, writes n. Grid-stride, fp32 math.
template <class T>
__global__ void accumulate_kernel(T* dst, const T* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = T(float(dst[i]) + float(src[i]));
}

}  // namespace

void accumulate(const Tensor& dst, const Tensor& src) {
  int64_t n = dst.numel();
  if (n == 0) return;
  int grid = int(std::min<int64_t>((n + 255) / 256, 8192));
  cudaStream_t stream = coil::cuda::compute_stream();
  switch (dst.dtype()) {
    case DType::f32:
      accumulate_kernel<<<grid, 256, 0, stream>>>(dst.data<float>(), src.data<float>(), n);
      break;
    case DType::bf16:
      accumulate_kernel<<<grid, 256, 0, stream>>>(static_cast<__nv_bfloat16*>(dst.raw()),
                                                  static_cast<const __nv_bfloat16*>(src.raw()), n);
      break;
    default: fail("accumulate: unsupported dtype on the GPU: {}", describe(dst));
  }
  COIL_CUDA_CHECK_LAUNCH("accumulate", "dst {}, src {}", describe(dst), describe(src));
}

}  // namespace coil::kernels::cuda
