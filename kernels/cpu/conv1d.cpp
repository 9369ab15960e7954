// CPU reference of the depthwise causal conv1d (math in kernels/conv1d.h), channel-last
// x[b, t, d]. Positions are walked in order per batch row, keeping the start of the current
// document: input position p is visible from t iff p >= that start, or, for p < 0 (the
// initial state), iff t's document began before the window (start 0). On the CPU threads:
// blocks of channels, each walking every (b, t) in order (every gradient of channel d sums
// over (b, t) in the serial order): the same bits at any thread count.
#include <cmath>

#include "kernels/conv1d.h"
#include "kernels/cpu/parallel.h"
#include "kernels/documents.h"

namespace coil::kernels::cpu {
namespace {

// The inputs of one batch row as a position of the current document sees them.
template <class T>
struct RowInputs {
  const T* x;     // x[b, 0, 0]
  const T* init;  // initial_state[b, 0, 0] or null
  int64_t nd, nk;
  int64_t start = 0;  // the first position of the current document

  // Index of input position p (t - (nk-1) <= p <= t) of channel d in x (>= 0) or in the
  // initial state (-1 - index), or kHidden when it does not count.
  static constexpr int64_t kHidden = INT64_MIN;
  int64_t index(int64_t p, int64_t d) const {
    if (p >= 0) return p >= start ? p * nd + d : kHidden;
    if (start > 0 || !init) return kHidden;
    return -1 - ((p + nk - 1) * nd + d);
  }
  T value(int64_t p, int64_t d) const {
    const int64_t i = index(p, d);
    return i == kHidden ? T(0) : i >= 0 ? x[i] : init[-1 - i];
  }
  // pre[t, d] = bias[d] + sum_k w[d, k] value(t - (nk-1) + k, d)
  T pre_activation(const T* w, const T* bp, int64_t t, int64_t d) const {
    T s = bp ? bp[d] : T(0);
    for (int64_t k = 0; k < nk; ++k) s += w[d * nk + k] * value(t - (nk - 1) + k, d);
    return s;
  }
};

template <class T>
const T* opt(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Conv1dOptions& o,
                    const Tensor& out, const Tensor& final_state) {
  dispatch_cpu_float("conv1d_forward", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = x.size(0), nl = x.size(1), nd = x.size(2), nk = weight.size(1);
    const T *w = weight.data<T>(), *bp = opt<T>(bias), *init = opt<T>(o.initial_state);
    const int32_t* seq = o.seq_idx.defined() ? o.seq_idx.data<int32_t>() : nullptr;
    T* op = out.data<T>();
    T* fin = final_state.defined() ? final_state.data<T>() : nullptr;
    parallel_for(nd, nb * nl * nk, [&](int64_t d_begin, int64_t d_end) {
      for (int64_t b = 0; b < nb; ++b) {
        RowInputs<T> row{x.data<T>() + b * nl * nd, init ? init + b * (nk - 1) * nd : nullptr, nd, nk};
        for (int64_t t = 0; t < nl; ++t) {
          if (seq && starts_document(seq + b * nl, t)) row.start = t;
          for (int64_t d = d_begin; d < d_end; ++d) {
            const T s = row.pre_activation(w, bp, t, d);
            op[(b * nl + t) * nd + d] = silu ? s / (T(1) + std::exp(-s)) : s;
          }
        }
        if (fin)  // the inputs t = nl-(nk-1) .. nl-1 as position nl-1 sees them
          for (int64_t j = 0; j < nk - 1; ++j)
            for (int64_t d = d_begin; d < d_end; ++d)
              fin[(b * (nk - 1) + j) * nd + d] = row.value(nl - (nk - 1) + j, d);
      }
    });
  });
}

void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dOptions& o, const Conv1dGrads& g) {
  dispatch_cpu_float("conv1d_backward", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = x.size(0), nl = x.size(1), nd = x.size(2), nk = weight.size(1);
    const T *w = weight.data<T>(), *bp = opt<T>(bias), *init = opt<T>(o.initial_state);
    const int32_t* seq = o.seq_idx.defined() ? o.seq_idx.data<int32_t>() : nullptr;
    const T* go = grad_out.data<T>();
    T *dx = g.dx.data<T>(), *dw = g.dweight.data<T>(), *db = g.dbias.defined() ? g.dbias.data<T>() : nullptr;
    T* dinit = g.dinitial_state.defined() ? g.dinitial_state.data<T>() : nullptr;
    for (Tensor t : {g.dweight, g.dbias, g.dx, g.dinitial_state})
      if (t.defined()) t.zero_();
    parallel_for(nd, nb * nl * nk, [&](int64_t d_begin, int64_t d_end) {
      for (int64_t b = 0; b < nb; ++b) {
        RowInputs<T> row{x.data<T>() + b * nl * nd, init ? init + b * (nk - 1) * nd : nullptr, nd, nk};
        T* dxb = dx + b * nl * nd;
        T* dinitb = dinit ? dinit + b * (nk - 1) * nd : nullptr;
        for (int64_t t = 0; t < nl; ++t) {
          if (seq && starts_document(seq + b * nl, t)) row.start = t;
          for (int64_t d = d_begin; d < d_end; ++d) {
            const T s = row.pre_activation(w, bp, t, d);
            T gt = go[(b * nl + t) * nd + d];
            if (silu) {
              const T sg = T(1) / (T(1) + std::exp(-s));
              gt *= sg * (T(1) + s * (T(1) - sg));
            }
            if (db) db[d] += gt;
            for (int64_t k = 0; k < nk; ++k) {
              const int64_t p = t - (nk - 1) + k, i = row.index(p, d);
              if (i == RowInputs<T>::kHidden) continue;
              dw[d * nk + k] += gt * (i >= 0 ? row.x[i] : row.init[-1 - i]);
              if (i >= 0) dxb[i] += gt * w[d * nk + k];
              else dinitb[-1 - i] += gt * w[d * nk + k];
            }
          }
        }
      }
    });
  });
}

}  // namespace coil::kernels::cpu
