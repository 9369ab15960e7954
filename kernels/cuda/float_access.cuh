// The two floating dtypes the elementwise GPU kernels take, f32 and bf16: element loads and
// stores through float (the math is fp32 either way), and the host-side dispatch that calls a
// generic lambda with a typed null pointer for the tensor's dtype.
#pragma once
#include <cuda_bf16.h>

#include "core/error.h"
#include "core/tensor.h"

namespace coil::kernels::cuda {

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16(v); }

// f(static_cast<T*>(nullptr)) with T the element type of t; op names the caller in the error.
template <class F>
void dispatch_gpu_float(const char* op, const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::f32: return f(static_cast<float*>(nullptr));
    case DType::bf16: return f(static_cast<__nv_bfloat16*>(nullptr));
    default: fail("{}: the GPU kernels take f32 or bf16, got {}", op, describe(t));
  }
}

}  // namespace coil::kernels::cuda
