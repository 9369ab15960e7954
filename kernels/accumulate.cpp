#include "kernels/accumulate.h"

namespace coil::kernels {

void accumulate(const Tensor& dst, const Tensor& src) {
  const char* op = "accumulate";
  check_defined(op, dst, "destination");
  check_defined(op, src, "source");
  check_same_device(op, dst, src);
  check_same_dtype(op, dst, src);
  check_same_shape(op, dst, src);
  if (dst.device().is_cpu()) return cpu::accumulate(dst, src);
#ifdef COIL_CUDA
  return cuda::accumulate(dst, src);
#else
  fail("{}: {} needs CUDA, but coil was built without it", op, describe(dst));
#endif
}

}  // namespace coil::kernels
