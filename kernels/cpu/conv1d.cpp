// CPU reference of the depthwise causal conv1d (math in kernels/conv1d.h), channel-last
// x[b, t, d]. On the CPU threads: the forward over rows (b, t), the backward over blocks of
// channels (every gradient of channel d sums over (b, t) in the serial order): the same bits
// at any thread count.
#include <cmath>

#include "kernels/conv1d.h"
#include "kernels/cpu/parallel.h"

namespace coil::kernels::cpu {
namespace {

// pre[b, t, d] = bias[d] + sum_k w[d, k] x[b, t - (nk-1) + k, d]; xb points at batch row b.
template <class T>
T pre_activation(const T* xb, const T* w, const T* bp, int64_t nd, int64_t nk, int64_t t, int64_t d) {
  T s = bp ? bp[d] : T(0);
  for (int64_t k = 0; k < nk; ++k) {
    const int64_t src = t - (nk - 1) + k;
    if (src >= 0) s += w[d * nk + k] * xb[src * nd + d];
  }
  return s;
}

}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& out) {
  dispatch_cpu_float("conv1d_forward", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = x.size(0), nl = x.size(1), nd = x.size(2), nk = weight.size(1);
    const T *xp = x.data<T>(), *w = weight.data<T>(), *bp = bias.defined() ? bias.data<T>() : nullptr;
    T* o = out.data<T>();
    parallel_for(nb * nl, nd * nk, [&](int64_t row_begin, int64_t row_end) {
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / nl, t = row % nl;
        for (int64_t d = 0; d < nd; ++d) {
          const T s = pre_activation(xp + b * nl * nd, w, bp, nd, nk, t, d);
          o[(b * nl + t) * nd + d] = silu ? s / (T(1) + std::exp(-s)) : s;
        }
      }
    });
  });
}

void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dGrads& g) {
  dispatch_cpu_float("conv1d_backward", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = x.size(0), nl = x.size(1), nd = x.size(2), nk = weight.size(1);
    const T *xp = x.data<T>(), *w = weight.data<T>(), *bp = bias.defined() ? bias.data<T>() : nullptr;
    const T* go = grad_out.data<T>();
    T *dx = g.dx.data<T>(), *dw = g.dweight.data<T>(), *db = g.dbias.defined() ? g.dbias.data<T>() : nullptr;
    for (Tensor t : {g.dweight, g.dbias, g.dx})
      if (t.defined()) t.zero_();
    parallel_for(nd, nb * nl * nk, [&](int64_t d_begin, int64_t d_end) {
      for (int64_t row = 0; row < nb * nl; ++row) {
        const int64_t b = row / nl, t = row % nl;
        for (int64_t d = d_begin; d < d_end; ++d) {
          const T s = pre_activation(xp + b * nl * nd, w, bp, nd, nk, t, d);
          T gt = go[(b * nl + t) * nd + d];
          if (silu) {
            const T sg = T(1) / (T(1) + std::exp(-s));
            gt *= sg * (T(1) + s * (T(1) - sg));
          }
          if (db) db[d] += gt;
          for (int64_t k = 0; k < nk; ++k) {
            const int64_t src = t - (nk - 1) + k;
            if (src >= 0) {
              const int64_t i = (b * nl + src) * nd + d;
              dw[d * nk + k] += gt * xp[i];
              dx[i] += gt * w[d * nk + k];
            }
          }
        }
      }
    });
  });
}

}  // namespace coil::kernels::cpu
