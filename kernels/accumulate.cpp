#include "kernels/accumulate.h"

#include "kernels/dispatch.h"

namespace coil::kernels {

void accumulate(const Tensor& dst, const Tensor& src) {
  const char* op = "accumulate";
  check_defined(op, dst, "destination");
  check_defined(op, src, "source");
  check_same_device(op, dst, src);
  check_same_dtype(op, dst, src);
  check_same_shape(op, dst, src);
  dst.mark_modified();
  COIL_DISPATCH(op, dst.device(), cpu::accumulate(dst, src), cuda::accumulate(dst, src));
}

}  // namespace coil::kernels
