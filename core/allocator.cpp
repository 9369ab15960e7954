#include "core/allocator.h"

#include <cstdlib>
#include <map>
#include <unordered_map>
#include <mutex>
#include <vector>

#include "core/cuda.h"
#include "core/error.h"

namespace coil {

std::string format_bytes(size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = double(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, units[u]);
}

namespace {

void* cpu_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) throw OutOfMemory(fmt::format("out of host memory: {} requested", format_bytes(bytes)));
  return p;
}

#ifdef COIL_CUDA

// One pool per device. Sizes are rounded up (512 B for small blocks, 2 MiB for large ones) so
// that freed blocks fit later requests; a free block is reused by best fit if it wastes at
// most a quarter of itself. All kernels run on the device's compute stream, in order, so a
// block freed by the host can be handed out again at once: any later use is queued behind
// the earlier ones.
struct DevicePool {
  std::multimap<size_t, void*> free_blocks;   // block size -> block
  std::unordered_map<void*, size_t> block_size;  // every block obtained from cudaMalloc
  MemoryStats stats;
};

struct CudaAllocator {
  std::mutex mutex;
  std::vector<DevicePool> pools;

  DevicePool& pool(int device) {
    if (pools.empty()) pools.resize(size_t(std::max(cuda_device_count(), 1)));
    COIL_CHECK(device >= 0 && size_t(device) < pools.size(), "allocator: no device cuda:{}", device);
    return pools[size_t(device)];
  }

  static size_t round_up(size_t bytes) {
    const size_t small = 512, large = size_t(2) << 20;
    return bytes < (size_t(1) << 20) ? (bytes + small - 1) / small * small
                                     : (bytes + large - 1) / large * large;
  }

  void release_cache(int device, DevicePool& p) {
    cuda::synchronize();
    for (auto& [size, ptr] : p.free_blocks) {
      cudaFree(ptr);
      p.block_size.erase(ptr);
      p.stats.reserved -= size;
    }
    p.free_blocks.clear();
  }

  void* alloc(int device, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex);
    DevicePool& p = pool(device);
    size_t size = round_up(bytes);
    void* ptr = nullptr;
    auto it = p.free_blocks.lower_bound(size);
    if (it != p.free_blocks.end() && it->first - size <= it->first / 4) {
      ptr = it->second;
      size = it->first;
      p.free_blocks.erase(it);
    } else {
      int previous = cuda::current_device();
      COIL_CUDA_CHECK(cudaSetDevice(device));
      cudaError_t err = cudaMalloc(&ptr, size);
      if (err != cudaSuccess) {
        cudaGetLastError();
        release_cache(device, p);
        err = cudaMalloc(&ptr, size);
      }
      COIL_CUDA_CHECK(cudaSetDevice(previous));
      if (err != cudaSuccess) {
        cudaGetLastError();
        size_t free_bytes = 0, total = 0;
        cudaMemGetInfo(&free_bytes, &total);
        throw OutOfMemory(fmt::format(
            "CUDA out of memory on cuda:{}: tried to allocate {}; {} in use by tensors, {} "
            "reserved by coil, peak {}, {} free of {} on the device. Hint: use a smaller "
            "micro-batch (train.micro_batch) or a shorter sequence.",
            device, format_bytes(bytes), format_bytes(p.stats.in_use),
            format_bytes(p.stats.reserved), format_bytes(p.stats.peak_in_use),
            format_bytes(free_bytes), format_bytes(total)));
      }
      p.stats.reserved += size;
      p.stats.num_cuda_mallocs++;
      p.block_size[ptr] = size;
    }
    p.stats.in_use += size;
    p.stats.peak_in_use = std::max(p.stats.peak_in_use, p.stats.in_use);
    p.stats.num_allocs++;
    return ptr;
  }

  void free(int device, void* ptr) {
    std::lock_guard<std::mutex> lock(mutex);
    DevicePool& p = pool(device);
    size_t size = p.block_size.at(ptr);
    p.stats.in_use -= size;
    p.free_blocks.emplace(size, ptr);
  }
};

CudaAllocator& cuda_allocator() {
  static CudaAllocator* allocator = new CudaAllocator();  // lives until exit, past static dtors
  return *allocator;
}

#endif

}  // namespace

void* device_alloc(Device device, size_t bytes) {
  if (device.is_cpu()) return cpu_alloc(bytes);
#ifdef COIL_CUDA
  if (bytes == 0) return nullptr;
  return cuda_allocator().alloc(device.index, bytes);
#else
  fail("cannot allocate {} on {}: coil was built without CUDA", format_bytes(bytes), device.str());
#endif
}

void device_free(Device device, void* ptr, size_t bytes) {
  if (!ptr) return;
  if (device.is_cpu()) return std::free(ptr);
#ifdef COIL_CUDA
  cuda_allocator().free(device.index, ptr);
#endif
}

MemoryStats memory_stats(Device device) {
#ifdef COIL_CUDA
  if (device.is_cuda()) {
    std::lock_guard<std::mutex> lock(cuda_allocator().mutex);
    return cuda_allocator().pool(device.index).stats;
  }
#endif
  return {};
}

void reset_peak_memory(Device device) {
#ifdef COIL_CUDA
  if (device.is_cuda()) {
    std::lock_guard<std::mutex> lock(cuda_allocator().mutex);
    auto& s = cuda_allocator().pool(device.index).stats;
    s.peak_in_use = s.in_use;
  }
#endif
}

void empty_cache(Device device) {
#ifdef COIL_CUDA
  if (device.is_cuda()) {
    std::lock_guard<std::mutex> lock(cuda_allocator().mutex);
    cuda_allocator().release_cache(device.index, cuda_allocator().pool(device.index));
  }
#endif
}

}  // namespace coil
