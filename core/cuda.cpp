#include "core/cuda.h"

#include <algorithm>
#include <map>
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

namespace {
// One attribute of the current device, asked of the driver once per device (kernels ask on
// every launch).
int cached_device_attribute(cudaDeviceAttr attribute) {
  static std::mutex mutex;
  static std::map<std::pair<int, int>, int> values;
  int d = current_device();
  std::lock_guard<std::mutex> lock(mutex);
  auto found = values.find({d, int(attribute)});
  if (found != values.end()) return found->second;
  int value = 0;
  COIL_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, d));
  values.emplace(std::make_pair(d, int(attribute)), value);
  return value;
}
}  // namespace

int multiprocessor_count() { return cached_device_attribute(cudaDevAttrMultiProcessorCount); }

int compute_capability() {
  return 10 * cached_device_attribute(cudaDevAttrComputeCapabilityMajor) +
         cached_device_attribute(cudaDevAttrComputeCapabilityMinor);
}

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

AsyncHostCopy::AsyncHostCopy(size_t bytes) : bytes_(bytes) {
  COIL_CUDA_CHECK(cudaMallocHost(&host_, std::max<size_t>(bytes, 1)));
  cudaEvent_t event = nullptr;
  COIL_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  event_ = event;
}

AsyncHostCopy::~AsyncHostCopy() {
  cudaEventDestroy(static_cast<cudaEvent_t>(event_));
  cudaFreeHost(host_);
}

void AsyncHostCopy::start(const void* device_src) {
  COIL_CUDA_CHECK(cudaMemcpyAsync(host_, device_src, bytes_, cudaMemcpyDeviceToHost, compute_stream()));
  COIL_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event_), compute_stream()));
}

const void* AsyncHostCopy::finish() {
  COIL_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event_)));
  return host_;
}

}  // namespace cuda

#else  // built without CUDA: every entry point says so

int cuda_device_count() { return 0; }
bool cuda_available() { return false; }
std::string cuda_unavailable_reason() { return "built without CUDA (COIL_CUDA=OFF)"; }

namespace cuda {
[[noreturn]] static void no_cuda(const char* what) { fail("{}: coil was built without CUDA", what); }
int current_device() { no_cuda("current_device"); }
void set_device(int) { no_cuda("set_device"); }
cudaStream_t compute_stream() { no_cuda("compute_stream"); }
void synchronize() { no_cuda("synchronize"); }
int multiprocessor_count() { no_cuda("multiprocessor_count"); }
int compute_capability() { no_cuda("compute_capability"); }
void memcpy_host_to_device(void*, const void*, size_t) { no_cuda("copy to a GPU"); }
void memcpy_device_to_host(void*, const void*, size_t) { no_cuda("copy from a GPU"); }
void memcpy_device_to_device(void*, const void*, size_t) { no_cuda("copy between GPUs"); }
void convert(const Tensor&, const Tensor&) { no_cuda("convert"); }
AsyncHostCopy::AsyncHostCopy(size_t bytes) : bytes_(bytes) { no_cuda("AsyncHostCopy"); }
AsyncHostCopy::~AsyncHostCopy() = default;
void AsyncHostCopy::start(const void*) { no_cuda("AsyncHostCopy"); }
const void* AsyncHostCopy::finish() { no_cuda("AsyncHostCopy"); }
void fill(const Tensor&, double) { no_cuda("fill"); }
}  // namespace cuda

#endif

}  // namespace coil
