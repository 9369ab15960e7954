#include "kernels/positions.h"

#include "kernels/dispatch.h"

namespace coil::kernels {

Tensor sinusoidal_positions(const Tensor& positions, int64_t d, DType dtype) {
  const char* op = "sinusoidal_positions";
  check_defined(op, positions, "positions");
  check_dtype(op, positions, {DType::i32, DType::i64});
  COIL_CHECK(d >= 1, "{}: the width d must be >= 1, got {}", op, d);
  std::vector<int64_t> shape = positions.shape();
  shape.push_back(d);
  Tensor out = Tensor::empty(shape, dtype, positions.device());
  if (out.numel() == 0) return out;
  COIL_DISPATCH(op, positions.device(), cpu::sinusoidal_positions(positions, out),
                cuda::sinusoidal_positions(positions, out));
  return out;
}

}  // namespace coil::kernels
