#include "core/cuda.h"

#include <mutex>
#include <vector>

#include "core/convert.h"
#include "core/error.h"

namespace coil {

#ifdef COIL_CUDA

int cuda_device_count() {
  static int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  }();
  return count;
}

bool cuda_available() { return cuda_device_count() > 0; }

std::string cuda_unavailable_reason() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) return fmt::format("cudaGetDeviceCount: {}", cudaGetErrorString(err));
  return n == 0 ? "no CUDA device" : "available";
}

namespace cuda {

int current_device() {
  int d = 0;
  COIL_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

int sm_count() {
  static std::mutex mutex;
  static std::vector<int> counts;
  int d = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (counts.size() <= size_t(d)) counts.resize(size_t(d) + 1, 0);
  if (!counts[size_t(d)]) COIL_CUDA_CHECK(cudaDeviceGetAttribute(&counts[size_t(d)], cudaDevAttrMultiProcessorCount, d));
  return counts[size_t(d)];
}

void set_device(int index) {
  COIL_CHECK(index >= 0 && index < cuda_device_count(), "set_device: cuda:{} does not exist ({} devices)",
             index, cuda_device_count());
  COIL_CUDA_CHECK(cudaSetDevice(index));
}

cudaStream_t compute_stream() {
  static std::mutex mutex;
  static std::vector<cudaStream_t> streams;
  int d = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (streams.empty()) streams.assign(size_t(cuda_device_count()), nullptr);
  if (!streams[size_t(d)]) COIL_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[size_t(d)], cudaStreamNonBlocking));
  return streams[size_t(d)];
}

void synchronize() { COIL_CUDA_CHECK(cudaStreamSynchronize(compute_stream())); }

void memcpy_host_to_device(void* dst, const void* src, size_t bytes) {
  // Pageable host memory: cudaMemcpyAsync returns once the source has been staged, so the
  // host buffer may be freed right after.
  COIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, compute_stream()));
}

void memcpy_device_to_host(void* dst, const void* src, size_t bytes) {
  COIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, compute_stream()));
  COIL_CUDA_CHECK(cudaStreamSynchronize(compute_stream()));
}

void memcpy_device_to_device(void* dst, const void* src, size_t bytes) {
  COIL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, compute_stream()));
}

}  // namespace cuda

#else  // built without CUDA: every entry point says so

int cuda_device_count() { return 0; }
bool cuda_available() { return false; }
std::string cuda_unavailable_reason() { return "built without CUDA (COIL_CUDA=OFF)"; }

namespace cuda {
[[noreturn]] static void no_cuda(const char* what) { fail("{}: coil was built without CUDA", what); }
int current_device() { no_cuda("current_device"); }
int sm_count() { no_cuda("sm_count"); }
void set_device(int) { no_cuda("set_device"); }
cudaStream_t compute_stream() { no_cuda("compute_stream"); }
void synchronize() { no_cuda("synchronize"); }
void memcpy_host_to_device(void*, const void*, size_t) { no_cuda("copy to a GPU"); }
void memcpy_device_to_host(void*, const void*, size_t) { no_cuda("copy from a GPU"); }
void memcpy_device_to_device(void*, const void*, size_t) { no_cuda("copy between GPUs"); }
void convert(const Tensor&, const Tensor&) { no_cuda("convert"); }
void fill(const Tensor&, double) { no_cuda("fill"); }
}  // namespace cuda

#endif

}  // namespace coil
