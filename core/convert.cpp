#include "core/convert.h"

#include <cstring>

namespace coil {
namespace {

// Host element access through double, which holds every value of every dtype here exactly
// (i64 beyond 2^53 aside, which token ids and sizes never reach).
double load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f64: return static_cast<const double*>(p)[i];
    case DType::bf16: return bf16_to_float(static_cast<const bf16*>(p)[i]);
    case DType::i32: return static_cast<const int32_t*>(p)[i];
    case DType::i64: return double(static_cast<const int64_t*>(p)[i]);
  }
  return 0;
}

void store(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::f32: static_cast<float*>(p)[i] = float(v); return;
    case DType::f64: static_cast<double*>(p)[i] = v; return;
    case DType::bf16: static_cast<bf16*>(p)[i] = float_to_bf16(float(v)); return;
    case DType::i32: static_cast<int32_t*>(p)[i] = int32_t(v); return;
    case DType::i64: static_cast<int64_t*>(p)[i] = int64_t(v); return;
  }
}

}  // namespace

void convert_same_device(const Tensor& src, const Tensor& dst) {
  check_same_device("convert", src, dst);
  if (src.device().is_cuda()) return cuda::convert(src, dst);
  int64_t n = src.numel();
  if (src.dtype() == dst.dtype()) {
    if (n && src.raw() != dst.raw()) std::memmove(dst.raw(), src.raw(), src.nbytes());
    return;
  }
  // i64 -> i64 never reaches here; i64 <-> floats goes through double.
  for (int64_t i = 0; i < n; ++i) store(dst.raw(), dst.dtype(), i, load(src.raw(), src.dtype(), i));
}

void fill_same_device(const Tensor& dst, double value) {
  if (dst.device().is_cuda()) return cuda::fill(dst, value);
  int64_t n = dst.numel();
  if (value == 0.0) {
    if (n) std::memset(dst.raw(), 0, dst.nbytes());
    return;
  }
  for (int64_t i = 0; i < n; ++i) store(dst.raw(), dst.dtype(), i, value);
}

}  // namespace coil
