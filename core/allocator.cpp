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
  // Private pools (see allocator.h): their free blocks, the owner of each block that belongs
  // to one, the pool serving this device now (0: none) and the next id.
  std::map<int, std::multimap<size_t, void*>> private_free;
  std::unordered_map<void*, int> owner;
  int active = 0, next_pool = 1;
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

  // Best fit from `blocks` if it wastes at most a quarter of the block; null if none.
  static void* take(std::multimap<size_t, void*>& blocks, size_t& size) {
    auto it = blocks.lower_bound(size);
    if (it == blocks.end() || it->first - size > it->first / 4) return nullptr;
    void* ptr = it->second;
    size = it->first;
    blocks.erase(it);
    return ptr;
  }

  void* alloc(int device, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex);
    DevicePool& p = pool(device);
    size_t size = round_up(bytes);
    void* ptr = p.active ? take(p.private_free[p.active], size) : nullptr;
    if (!ptr) ptr = take(p.free_blocks, size);
    if (!ptr) {
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
    if (p.active) p.owner[ptr] = p.active;
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
    if (p.active) p.owner[ptr] = p.active;
    auto owner = p.owner.find(ptr);
    if (owner != p.owner.end()) p.private_free[owner->second].emplace(size, ptr);
    else p.free_blocks.emplace(size, ptr);
  }

  int create_pool(int device) {
    std::lock_guard<std::mutex> lock(mutex);
    DevicePool& p = pool(device);
    p.private_free[p.next_pool];
    return p.next_pool++;
  }

  void set_active(int device, int id) {
    std::lock_guard<std::mutex> lock(mutex);
    DevicePool& p = pool(device);
    COIL_CHECK(id == 0 || p.private_free.count(id), "allocator: no private pool {} on cuda:{}", id, device);
    p.active = id;
  }

  void release_pool(int device, int id) {
    std::lock_guard<std::mutex> lock(mutex);
    DevicePool& p = pool(device);
    auto it = p.private_free.find(id);
    if (it == p.private_free.end()) return;
    for (auto& [size, ptr] : it->second) p.free_blocks.emplace(size, ptr);
    p.private_free.erase(it);
    for (auto o = p.owner.begin(); o != p.owner.end();) o = o->second == id ? p.owner.erase(o) : std::next(o);
    if (p.active == id) p.active = 0;
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

int create_private_pool(Device device) {
#ifdef COIL_CUDA
  if (device.is_cuda()) return cuda_allocator().create_pool(device.index);
#endif
  fail("private memory pools are for CUDA devices, got {}", device.str());
}

void set_active_private_pool(Device device, int pool) {
#ifdef COIL_CUDA
  if (device.is_cuda()) return cuda_allocator().set_active(device.index, pool);
#endif
  fail("private memory pools are for CUDA devices, got {} (pool {})", device.str(), pool);
}

void release_private_pool(Device device, int pool) {
#ifdef COIL_CUDA
  if (device.is_cuda()) return cuda_allocator().release_pool(device.index, pool);
#endif
  fail("private memory pools are for CUDA devices, got {} (pool {})", device.str(), pool);
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
