// CPU reference of RoPE: plain loops, the angle as in kernels/rope.h.
#include <cmath>
#include <vector>

#include "kernels/rope.h"

namespace coil::kernels::cpu {
namespace {

template <class T>
void rope_impl(const RopeProblem& p, const T* x, T* y) {
  const int64_t half = p.head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[size_t(i)] = float(std::pow(p.base, -2.0 * double(i) / double(p.head_dim)));
  const double sign = p.inverse ? -1.0 : 1.0;
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t row_offset = p.position_offset + (p.positions ? p.positions[b] : 0);
    for (int64_t t = 0; t < p.seq; ++t)
      for (int64_t g = 0; g < p.groups; ++g)
        for (int64_t h = 0; h < p.heads; ++h) {
          int64_t off = (((b * p.seq + t) * p.groups + g) * p.heads + h) * p.head_dim;
          const T* xr = x + off;
          T* yr = y + off;
          if (g >= p.rotate_groups) {
            for (int64_t i = 0; i < p.head_dim; ++i) yr[i] = xr[i];
            continue;
          }
          for (int64_t i = 0; i < half; ++i) {
            float angle = float(t + row_offset) * inv_freq[size_t(i)];
            double c = std::cos(double(angle)), s = sign * std::sin(double(angle));
            double x1 = double(xr[i]), x2 = double(xr[i + half]);
            yr[i] = T(x1 * c - x2 * s);
            yr[i + half] = T(x2 * c + x1 * s);
          }
        }
  }
}

}  // namespace

void rope(const RopeProblem& p, const Tensor& x, const Tensor& y) {
  dispatch_cpu_float("rope", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    rope_impl<T>(p, x.data<T>(), y.data<T>());
  });
}

}  // namespace coil::kernels::cpu
