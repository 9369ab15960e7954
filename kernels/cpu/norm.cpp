#include <cmath>

#include "kernels/norm.h"

namespace coil::kernels::cpu {

void norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, bool rms, const NormForward& out) {
  dispatch_cpu_float("norm", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t D = x.size(-1), rows = x.numel() / D;
    const T* w = weight.data<T>();
    const T* b = bias.defined() ? bias.data<T>() : nullptr;
    std::vector<T> r(size_t(D), T(0));
    for (int64_t i = 0; i < rows; ++i) {
      const T* xr = x.data<T>() + i * D;
      for (int64_t j = 0; j < D; ++j) r[j] = xr[j] + (residual.defined() ? residual.data<T>()[i * D + j] : T(0));
      if (out.residual.defined()) std::copy(r.begin(), r.end(), out.residual.data<T>() + i * D);
      T mean = 0;
      if (!rms) {
        for (int64_t j = 0; j < D; ++j) mean += r[j];
        mean /= T(D);
      }
      T var = 0;
      for (int64_t j = 0; j < D; ++j) var += (r[j] - mean) * (r[j] - mean);
      T rstd = T(1) / std::sqrt(var / T(D) + T(eps));
      if (!rms) out.mean.data<T>()[i] = mean;
      out.rstd.data<T>()[i] = rstd;
      T* y = out.y.data<T>() + i * D;
      for (int64_t j = 0; j < D; ++j) y[j] = (r[j] - mean) * rstd * w[j] + (b ? b[j] : T(0));
    }
  });
}

void norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& mean, const Tensor& rstd,
                   const Tensor& weight, const Tensor& grad_residual_out, bool rms, const NormBackward& out) {
  COIL_CHECK(weight.dtype() == input.dtype() && grad_y.dtype() == input.dtype(),
             "norm_backward: the CPU reference takes one dtype, got input {}, weight {}, gradient {}",
             describe(input), describe(weight), describe(grad_y));
  dispatch_cpu_float("norm_backward", input, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t D = input.size(-1), rows = input.numel() / D;
    const T* w = weight.data<T>();
    std::vector<T> dw(size_t(D), T(0)), db(size_t(D), T(0));
    for (int64_t i = 0; i < rows; ++i) {
      const T* r = input.data<T>() + i * D;
      const T* dy = grad_y.data<T>() + i * D;
      const T mu = rms ? T(0) : mean.data<T>()[i], rs = rstd.data<T>()[i];
      T sum_g = 0, sum_gx = 0;
      for (int64_t j = 0; j < D; ++j) {
        T xhat = (r[j] - mu) * rs, g = dy[j] * w[j];
        sum_g += g;
        sum_gx += g * xhat;
        dw[j] += dy[j] * xhat;
        db[j] += dy[j];
      }
      const T c1 = sum_gx / T(D), c2 = rms ? T(0) : sum_g / T(D);
      for (int64_t j = 0; j < D; ++j) {
        T xhat = (r[j] - mu) * rs, g = dy[j] * w[j];
        T dr = rs * (g - c2 - xhat * c1);
        if (grad_residual_out.defined()) dr += grad_residual_out.data<T>()[i * D + j];
        out.dx.data<T>()[i * D + j] = dr;
        if (out.dresidual.defined()) out.dresidual.data<T>()[i * D + j] = dr;
      }
    }
    std::copy(dw.begin(), dw.end(), out.dweight.data<T>());
    if (out.dbias.defined()) std::copy(db.begin(), db.end(), out.dbias.data<T>());
  });
}

}  // namespace coil::kernels::cpu
