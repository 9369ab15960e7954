// CPU reference of the sinusoidal positions: kernels/positions.h's formula, element by element.
#include "kernels/positions.h"

namespace coil::kernels::cpu {
namespace {

template <class T, class P>
void sinusoidal_impl(const P* positions, int64_t n, int64_t d, T* out) {
  for (int64_t s = 0; s < n; ++s)
    for (int64_t j = 0; j < d; ++j) out[s * d + j] = T(sinusoidal_position(int64_t(positions[s]), j, d));
}

}  // namespace

void sinusoidal_positions(const Tensor& positions, const Tensor& out) {
  const int64_t d = out.size(-1), n = positions.numel();
  dispatch_cpu_float("sinusoidal_positions", out, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    if (positions.dtype() == DType::i32) sinusoidal_impl(positions.data<int32_t>(), n, d, out.data<T>());
    else sinusoidal_impl(positions.data<int64_t>(), n, d, out.data<T>());
  });
}

}  // namespace coil::kernels::cpu
