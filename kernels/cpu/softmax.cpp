#include <cmath>

#include "kernels/softmax.h"

namespace coil::kernels::cpu {

void softmax_forward(const Tensor& x, const Tensor& y, bool log) {
  dispatch_cpu_float("softmax", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t cols = x.size(-1), rows = x.numel() / cols;
    const T* in = x.data<T>();
    T* out = y.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = in + r * cols;
      T* yr = out + r * cols;
      T m = xr[0];
      for (int64_t j = 1; j < cols; ++j) m = std::max(m, xr[j]);
      T s = 0;
      for (int64_t j = 0; j < cols; ++j) s += std::exp(xr[j] - m);
      T log_s = std::log(s);
      for (int64_t j = 0; j < cols; ++j)
        yr[j] = log ? xr[j] - m - log_s : std::exp(xr[j] - m) / s;
    }
  });
}

void softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log) {
  dispatch_cpu_float("softmax_backward", y, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t cols = y.size(-1), rows = y.numel() / cols;
    const T* g = grad_y.data<T>();
    const T* out = y.data<T>();
    T* dx = grad_x.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* gr = g + r * cols;
      const T* yr = out + r * cols;
      T* dr = dx + r * cols;
      T s = 0;
      for (int64_t j = 0; j < cols; ++j) s += log ? gr[j] : gr[j] * yr[j];
      for (int64_t j = 0; j < cols; ++j)
        dr[j] = log ? gr[j] - std::exp(yr[j]) * s : yr[j] * (gr[j] - s);
    }
  });
}

}  // namespace coil::kernels::cpu
