#include "kernels/rope.h"

#include "kernels/dispatch.h"

namespace coil::kernels {

Tensor rope(const Tensor& x, const RopeOptions& options, bool inverse) {
  const char* op = inverse ? "rope_backward" : "rope";
  check_defined(op, x, "x");
  COIL_CHECK(x.dim() == 4 || (x.dim() == 5 && x.size(2) == 3),
             "{}: x must be (B, T, H, hd) or a packed qkv (B, T, 3, H, hd), got {}", op,
             describe(x));
  COIL_CHECK(x.size(-1) % 2 == 0 && x.size(-1) > 0, "{}: head dim must be even, got {}", op,
             describe(x));
  COIL_CHECK(options.base > 0, "{}: base (theta) must be > 0, got {}", op, options.base);
  COIL_CHECK(options.position_offset >= 0, "{}: position_offset must be >= 0, got {}", op,
             options.position_offset);
  if (options.positions.defined()) {
    const Tensor& pos = options.positions;
    COIL_CHECK(pos.dtype() == DType::i32 && pos.dim() == 1 && pos.size(0) == x.size(0),
               "{}: positions must be i32 [{}] (one per batch row), got {}", op, x.size(0), describe(pos));
    check_same_device(op, x, pos);
  }
  if (x.device().is_cpu()) check_dtype(op, x, {DType::f32, DType::f64});
  else check_dtype(op, x, {DType::f32, DType::bf16});
  RopeProblem p;
  p.batch = x.size(0);
  p.seq = x.size(1);
  p.groups = x.dim() == 5 ? 3 : 1;
  p.rotate_groups = x.dim() == 5 ? 2 : 1;
  p.heads = x.size(-2);
  p.head_dim = x.size(-1);
  p.position_offset = options.position_offset;
  if (options.positions.defined()) p.positions = options.positions.data<int32_t>();
  p.base = options.base;
  p.inverse = inverse;
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return y;
  COIL_DISPATCH(op, x.device(), cpu::rope(p, x, y), cuda::rope(p, x, y));
  return y;
}

Tensor rope_backward(const Tensor& grad, const RopeOptions& options) {
  return rope(grad, options, true);
}

}  // namespace coil::kernels
