// CPU reference for the reductions: plain loops, accumulated in double.
#include "kernels/reduce.h"

namespace coil::kernels::cpu {

void sum_arc(const Tensor& x, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out) {
  dispatch_cpu_float("sum", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* p = x.data<T>();
    T* q = out.data<T>();
    for (int64_t a = 0; a < A; ++a)
      for (int64_t c = 0; c < C; ++c) {
        double s = 0;
        for (int64_t r = 0; r < R; ++r) s += double(p[(a * R + r) * C + c]);
        q[a * C + c] = T(factor * s);
      }
  });
}

void expand_arc(const Tensor& g, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out) {
  dispatch_cpu_float("expand", g, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* p = g.data<T>();
    T* q = out.data<T>();
    for (int64_t a = 0; a < A; ++a)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c) q[(a * R + r) * C + c] = T(factor * double(p[a * C + c]));
  });
}

}  // namespace coil::kernels::cpu
