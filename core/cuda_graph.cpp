#include "core/cuda_graph.h"

#include "core/allocator.h"
#include "core/cuda.h"
#include "core/error.h"

namespace coil {

#ifdef COIL_CUDA

CudaGraph::CudaGraph(Device device) : device_(device) {
  COIL_CHECK(device.is_cuda(), "CudaGraph: graphs capture CUDA work, got device {}", device.str());
  pool_ = create_private_pool(device);
}

CudaGraph::~CudaGraph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  release_private_pool(device_, pool_);
}

void CudaGraph::capture(const std::function<void()>& work) {
  COIL_CHECK(!captured(), "CudaGraph: already captured");
  cudaStream_t stream = cuda::compute_stream();
  set_active_private_pool(device_, pool_);
  COIL_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed));
  cudaGraph_t graph = nullptr;
  try {
    work();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    set_active_private_pool(device_, 0);
    throw;
  }
  cudaError_t end = cudaStreamEndCapture(stream, &graph);
  set_active_private_pool(device_, 0);
  COIL_CUDA_CHECK(end);
  graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  COIL_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  exec_ = exec;
}

void CudaGraph::replay() {
  COIL_CHECK(captured(), "CudaGraph: replay before capture");
  COIL_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), cuda::compute_stream()));
}

#else

CudaGraph::CudaGraph(Device device) : device_(device) {
  fail("CudaGraph: coil was built without CUDA (device {})", device.str());
}
CudaGraph::~CudaGraph() = default;
void CudaGraph::capture(const std::function<void()>&) { fail("CudaGraph: coil was built without CUDA"); }
void CudaGraph::replay() { fail("CudaGraph: coil was built without CUDA"); }

#endif

}  // namespace coil
