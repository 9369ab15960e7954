#include "kernels/dispatch.h"

#include "core/error.h"

namespace coil::kernels {

void fail_without_cuda(const char* op, Device device) {
  fail("{}: the tensors are on {}, but coil was built without CUDA", op, device.str());
}

}  // namespace coil::kernels
