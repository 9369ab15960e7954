#include "kernels/accumulate.h"

namespace coil::kernels::cpu {

void accumulate(const Tensor& dst, const Tensor& src) {
  if (dst.dtype() == DType::bf16) {
    bf16* d = dst.data<bf16>();
    const bf16* s = src.data<bf16>();
    for (int64_t i = 0; i < dst.numel(); ++i)
      d[i] = float_to_bf16(bf16_to_float(d[i]) + bf16_to_float(s[i]));
    return;
  }
  dispatch_cpu_float("accumulate", dst, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    T* d = dst.data<T>();
    const T* s = src.data<T>();
    for (int64_t i = 0; i < dst.numel(); ++i) d[i] += s[i];
  });
}

}  // namespace coil::kernels::cpu
