// The two floating dtypes the GPU kernels take, f32 and bf16: the host-side dispatch that calls
// a generic lambda with a typed null pointer for the tensor's dtype (element access through
// float is in device_util.cuh).
#pragma once
#include "core/error.h"
#include "core/tensor.h"
#include "kernels/cuda/device_util.cuh"

namespace coil::kernels::cuda {

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
