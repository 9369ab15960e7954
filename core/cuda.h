// The CUDA runtime as the rest of coil sees it. Everything here also links without CUDA:
// cuda_available() is then false and the other calls raise a clear error.
#pragma once
#include <cstddef>
#include <string>

#ifdef COIL_CUDA
#include <cuda_runtime.h>
#else
using cudaStream_t = struct CUstream_st*;
#endif

namespace coil {

bool cuda_available();                 // built with CUDA and at least one device is usable
std::string cuda_unavailable_reason(); // why not, for messages ("built without CUDA", ...)
int cuda_device_count();

namespace cuda {

// The stream on which all of coil's kernels run on the current device (one per device,
// non-blocking with respect to the legacy default stream).
cudaStream_t compute_stream();
int current_device();
void set_device(int index);
void synchronize();  // waits for the compute stream: a documented host sync point
int multiprocessor_count();  // of the current device (cached)
int compute_capability();    // of the current device, major * 10 + minor: 90 on Hopper (cached)

void memcpy_host_to_device(void* dst, const void* src, size_t bytes);
void memcpy_device_to_host(void* dst, const void* src, size_t bytes);  // syncs
void memcpy_device_to_device(void* dst, const void* src, size_t bytes);

// A device-to-host copy into page-locked memory, queued on the compute stream: start()
// returns at once; finish() waits for that copy alone (an event), not for work queued after
// it. Generation reads each step's sampled ids this way while the next step runs.
class AsyncHostCopy {
 public:
  explicit AsyncHostCopy(size_t bytes);
  ~AsyncHostCopy();
  AsyncHostCopy(const AsyncHostCopy&) = delete;
  AsyncHostCopy& operator=(const AsyncHostCopy&) = delete;
  void start(const void* device_src);  // copies `bytes`
  const void* finish();                // the host copy, once complete

 private:
  size_t bytes_;
  void* host_ = nullptr;
  void* event_ = nullptr;  // cudaEvent_t
};

}  // namespace cuda
}  // namespace coil

#ifdef COIL_CUDA
#include "core/error.h"
// Raises an Error naming the call, the CUDA error and where it happened.
#define COIL_CUDA_CHECK(call)                                                                  \
  do {                                                                                         \
    cudaError_t coil_err_ = (call);                                                            \
    if (coil_err_ != cudaSuccess)                                                              \
      ::coil::fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(coil_err_),           \
                   cudaGetErrorString(coil_err_), #call, __FILE__, __LINE__);                   \
  } while (0)
// After a kernel launch: names the kernel and its arguments in the error.
#define COIL_CUDA_CHECK_LAUNCH(kernel_name, ...)                                               \
  do {                                                                                         \
    cudaError_t coil_err_ = cudaGetLastError();                                                \
    if (coil_err_ != cudaSuccess)                                                              \
      ::coil::fail("CUDA kernel {} failed to launch: {} ({}); {}", kernel_name,                \
                   cudaGetErrorName(coil_err_), cudaGetErrorString(coil_err_),                 \
                   ::fmt::format(__VA_ARGS__));                                                \
  } while (0)
#endif
