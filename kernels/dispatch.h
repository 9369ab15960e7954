// The CPU/CUDA dispatch of a kernel entry point (kernels/<family>.cpp), written once:
//
//   COIL_DISPATCH(op, x.device(), cpu::conv1d_forward(x, ..., out), cuda::conv1d_forward(x, ..., out));
//   return out;
//
// runs the CPU call where the device is the CPU and the CUDA call on a GPU. In a build without
// CUDA the CUDA call is not compiled, and a GPU device is an error naming the op.
#pragma once
#include "core/device.h"

namespace coil::kernels {

[[noreturn]] void fail_without_cuda(const char* op, Device device);

}  // namespace coil::kernels

#ifdef COIL_CUDA
#define COIL_DISPATCH(op, device, cpu_call, cuda_call) \
  do {                                                 \
    if ((device).is_cpu()) {                           \
      cpu_call;                                        \
    } else {                                           \
      cuda_call;                                       \
    }                                                  \
  } while (0)
#else
#define COIL_DISPATCH(op, device, cpu_call, cuda_call)  \
  do {                                                  \
    if ((device).is_cpu()) {                            \
      cpu_call;                                         \
    } else {                                            \
      ::coil::kernels::fail_without_cuda(op, (device)); \
    }                                                   \
  } while (0)
#endif
