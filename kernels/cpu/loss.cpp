#include <cmath>
#include <limits>

#include "kernels/loss.h"

namespace coil::kernels::cpu {
namespace {

int64_t target_at(const Tensor& targets, int64_t i) {
  return targets.dtype() == DType::i64 ? targets.data<int64_t>()[i] : int64_t(targets.data<int32_t>()[i]);
}

double scalar_value(const Tensor& t) {
  return t.dtype() == DType::f64 ? *t.data<double>() : double(*t.data<float>());
}

}  // namespace

void cross_entropy_count(const Tensor& targets, int64_t ignore_index, int64_t V, const Tensor& count) {
  int64_t n = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) {
    int64_t t = target_at(targets, i);
    if (t == ignore_index) continue;
    COIL_CHECK(t >= 0 && t < V,
               "cross_entropy: target {} at position {} is outside [0, {}) (the vocabulary) and is not "
               "ignore_index ({})", t, i, V, ignore_index);
    ++n;
  }
  if (count.dtype() == DType::f64)
    *count.data<double>() = double(n);
  else
    *count.data<float>() = float(n);
}

void cross_entropy_rows(const Tensor& logits, const Tensor& targets, int64_t ignore_index, int64_t row0,
                        const Tensor& count, const Tensor& grad_loss, const Tensor& lse, bool lse_given,
                        const Tensor& row_loss, const Tensor& grad) {
  dispatch_cpu_float("cross_entropy", logits, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t N = logits.size(0), V = logits.size(1);
    const double c = scalar_value(count);
    const T scale = T((grad_loss.defined() ? scalar_value(grad_loss) : 1.0) * (c > 0 ? 1.0 / c : 0.0));
    for (int64_t i = 0; i < N; ++i) {
      const T* x = logits.data<T>() + i * V;
      const int64_t t = target_at(targets, i);
      const bool ignored = t == ignore_index;
      COIL_CHECK(ignored || (t >= 0 && t < V),
                 "cross_entropy: target {} at position {} is outside [0, {}) (the vocabulary) and is not "
                 "ignore_index ({})", t, row0 + i, V, ignore_index);
      T l;
      if (lse_given) {
        l = lse.data<T>()[i];
      } else {
        T m = x[0];
        for (int64_t j = 1; j < V; ++j) m = std::max(m, x[j]);
        T s = 0;
        for (int64_t j = 0; j < V; ++j) s += std::exp(x[j] - m);
        l = m + std::log(s);
        if (lse.defined()) lse.data<T>()[i] = l;
      }
      if (row_loss.defined()) row_loss.data<T>()[i] = ignored ? T(0) : l - x[t];
      if (grad.defined()) {
        T* g = grad.data<T>() + i * V;  // may alias x: x[j] is read before g[j] is written
        for (int64_t j = 0; j < V; ++j) g[j] = ignored ? T(0) : (std::exp(x[j] - l) - T(j == t)) * scale;
      }
    }
  });
}

void cross_entropy_mean(const Tensor& row_loss, const Tensor& count, const Tensor& loss) {
  dispatch_cpu_float("cross_entropy", row_loss, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    T s = 0;
    for (int64_t i = 0; i < row_loss.numel(); ++i) s += row_loss.data<T>()[i];
    const T c = count.data<T>()[0];
    loss.data<T>()[0] = c > 0 ? s / c : T(0);
  });
}

void scale_by_scalar(const Tensor& x, const Tensor& s, const Tensor& out) {
  const double f = scalar_value(s);
  dispatch_cpu_float("scale_by_scalar", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    for (int64_t i = 0; i < x.numel(); ++i) out.data<T>()[i] = x.data<T>()[i] * T(f);
  });
}

}  // namespace coil::kernels::cpu
