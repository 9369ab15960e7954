// Device memory. CPU buffers are 64-byte aligned heap blocks. CUDA buffers come from a
// caching, stream-ordered allocator: freed blocks go back to a per-device pool (tied to the
// compute stream, on which all kernels run, so reuse needs no sync) and are handed out again
// by best fit. A cudaMalloc that fails first releases the cache and retries; if it still
// fails the error names the request, the statistics and a hint.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/device.h"

namespace coil {

struct MemoryStats {
  size_t in_use = 0;       // bytes handed out to tensors now
  size_t peak_in_use = 0;  // highest in_use since the last reset
  size_t reserved = 0;     // bytes obtained from cudaMalloc (in use + cached)
  size_t num_allocs = 0;   // allocations served (from cache or not)
  size_t num_cuda_mallocs = 0;
};

void* device_alloc(Device device, size_t bytes);
void device_free(Device device, void* ptr, size_t bytes);

// Private pools, for CUDA graphs (core/cuda_graph.h). While a pool is active on a device, an
// allocation there is served from the pool's own free blocks (else from the shared cache or
// cudaMalloc, and the block joins the pool), and every block freed there joins the pool's free
// blocks, wherever it came from. So the memory a captured graph touches is never handed to
// another tensor while the pool lives. Releasing the pool returns its free blocks to the shared
// cache; its blocks still in use return when they are freed.
int create_private_pool(Device device);                 // an id > 0
void set_active_private_pool(Device device, int pool);  // 0: none (the shared cache)
void release_private_pool(Device device, int pool);

MemoryStats memory_stats(Device device);
void reset_peak_memory(Device device);
void empty_cache(Device device);  // returns cached, unused blocks to CUDA
std::string format_bytes(size_t bytes);

}  // namespace coil
