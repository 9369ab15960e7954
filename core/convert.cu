// Conversion and fill on the GPU. Memory traffic: one read of src and one write of dst.
#include <cuda_bf16.h>

#include "core/convert.h"
#include "core/cuda.h"

namespace coil::cuda {
namespace {

template <class T> __device__ double load_as_double(const T* p, int64_t i) { return double(p[i]); }
template <> __device__ double load_as_double(const __nv_bfloat16* p, int64_t i) {
  return double(__bfloat162float(p[i]));
}
template <class T> __device__ void store_from_double(T* p, int64_t i, double v) { p[i] = T(v); }
template <> __device__ void store_from_double(__nv_bfloat16* p, int64_t i, double v) {
  p[i] = __float2bfloat16(float(v));
}

template <class S, class D>
__global__ void convert_kernel(const S* src, D* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store_from_double(dst, i, load_as_double(src, i));
}

template <class D>
__global__ void fill_kernel(D* dst, int64_t n, double value) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store_from_double(dst, i, value);
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 65535)); }

// Calls f with a typed null pointer for t's dtype (bf16 as __nv_bfloat16).
template <class F>
void dispatch_all(DType t, F&& f) {
  switch (t) {
    case DType::f32: return f(static_cast<float*>(nullptr));
    case DType::f64: return f(static_cast<double*>(nullptr));
    case DType::bf16: return f(static_cast<__nv_bfloat16*>(nullptr));
    case DType::i32: return f(static_cast<int32_t*>(nullptr));
    case DType::i64: return f(static_cast<long long*>(nullptr));
  }
}

}  // namespace

void convert(const Tensor& src, const Tensor& dst) {
  int64_t n = src.numel();
  if (n == 0) return;
  if (src.dtype() == dst.dtype()) {
    if (src.raw() != dst.raw())
      COIL_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice,
                                      compute_stream()));
    return;
  }
  dispatch_all(src.dtype(), [&](auto* s) {
    dispatch_all(dst.dtype(), [&](auto* d) {
      using S = std::remove_pointer_t<decltype(s)>;
      using D = std::remove_pointer_t<decltype(d)>;
      convert_kernel<<<grid_for(n), 256, 0, compute_stream()>>>(static_cast<const S*>(src.raw()),
                                                               static_cast<D*>(dst.raw()), n);
    });
  });
  COIL_CUDA_CHECK_LAUNCH("convert", "{} -> {}", describe(src), describe(dst));
}

void fill(const Tensor& dst, double value) {
  int64_t n = dst.numel();
  if (n == 0) return;
  if (value == 0.0) {
    COIL_CUDA_CHECK(cudaMemsetAsync(dst.raw(), 0, dst.nbytes(), compute_stream()));
    return;
  }
  dispatch_all(dst.dtype(), [&](auto* d) {
    using D = std::remove_pointer_t<decltype(d)>;
    fill_kernel<<<grid_for(n), 256, 0, compute_stream()>>>(static_cast<D*>(dst.raw()), n, value);
  });
  COIL_CUDA_CHECK_LAUNCH("fill", "{} with {}", describe(dst), value);
}

}  // namespace coil::cuda
