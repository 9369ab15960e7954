// CPU reference of the depthwise causal conv1d (math in kernels/conv1d.h).
#include <cmath>

#include "kernels/conv1d.h"

namespace coil::kernels::cpu {

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& out) {
  dispatch_cpu_float("conv1d_forward", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = x.size(0), nd = x.size(1), nl = x.size(2), nk = weight.size(1);
    const T *xp = x.data<T>(), *w = weight.data<T>(), *bp = bias.defined() ? bias.data<T>() : nullptr;
    T* o = out.data<T>();
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t d = 0; d < nd; ++d) {
        const T* xr = xp + (b * nd + d) * nl;
        for (int64_t t = 0; t < nl; ++t) {
          T s = bp ? bp[d] : T(0);
          for (int64_t k = 0; k < nk; ++k) {
            const int64_t src = t - (nk - 1) + k;
            if (src >= 0) s += w[d * nk + k] * xr[src];
          }
          o[(b * nd + d) * nl + t] = silu ? s / (T(1) + std::exp(-s)) : s;
        }
      }
  });
}

void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dGrads& g) {
  dispatch_cpu_float("conv1d_backward", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = x.size(0), nd = x.size(1), nl = x.size(2), nk = weight.size(1);
    const T *xp = x.data<T>(), *w = weight.data<T>(), *bp = bias.defined() ? bias.data<T>() : nullptr;
    const T* go = grad_out.data<T>();
    T *dx = g.dx.data<T>(), *dw = g.dweight.data<T>(), *db = g.dbias.defined() ? g.dbias.data<T>() : nullptr;
    for (Tensor t : {g.dweight, g.dbias, g.dx})
      if (t.defined()) t.zero_();
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t d = 0; d < nd; ++d) {
        const int64_t row = (b * nd + d) * nl;
        for (int64_t t = 0; t < nl; ++t) {
          T s = bp ? bp[d] : T(0);
          for (int64_t k = 0; k < nk; ++k) {
            const int64_t src = t - (nk - 1) + k;
            if (src >= 0) s += w[d * nk + k] * xp[row + src];
          }
          T gt = go[row + t];
          if (silu) {
            const T sg = T(1) / (T(1) + std::exp(-s));
            gt *= sg * (T(1) + s * (T(1) - sg));
          }
          if (db) db[d] += gt;
          for (int64_t k = 0; k < nk; ++k) {
            const int64_t src = t - (nk - 1) + k;
            if (src >= 0) {
              dw[d * nk + k] += gt * xp[row + src];
              dx[row + src] += gt * w[d * nk + k];
            }
          }
        }
      }
  });
}

}  // namespace coil::kernels::cpu
