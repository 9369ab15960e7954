// CudaGraph: the work a function queues on the compute stream, captured once as a CUDA graph
// and replayed any number of times with one launch (generation's decode step: hundreds of
// small kernels a token, docs/GENERATION.md).
//
// Capture runs in the relaxed mode with a private memory pool active (core/allocator.h): the
// temporaries the work allocates keep their addresses for every replay, and no other tensor is
// handed their memory while the graph lives. The work must not synchronize the stream or copy
// from pageable host memory, and must have run once before outside a capture (lazy set-up such
// as cuBLASLt's handle and workspace must not happen inside it). Every tensor it reads or
// writes besides its own temporaries must outlive the graph: inputs are written into, and
// outputs read from, static buffers between replays. Kernel arguments (shapes, scalars) are
// frozen at capture; what changes between replays must live in device memory.
#pragma once
#include <functional>

#include "core/device.h"

namespace coil {

class CudaGraph {
 public:
  explicit CudaGraph(Device device);
  ~CudaGraph();
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;

  void capture(const std::function<void()>& work);  // once
  void replay();                                     // queues the captured work
  bool captured() const { return exec_ != nullptr; }

 private:
  Device device_;
  int pool_ = 0;
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
};

}  // namespace coil
