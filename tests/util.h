// Helpers shared by the tests.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/gradcheck.h"
#include "core/cuda.h"
#include "core/random.h"
#include "core/tensor.h"
#include "tests/catch.h"

namespace coil::test {

// REQUIRE that a gradient check passed; its message says where it failed when not.
inline void require_ok(const autograd::GradcheckResult& r) {
  INFO(r.message);
  REQUIRE(r.ok);
}
inline void require_gradcheck(const autograd::DifferentiableFn& f, const std::vector<Tensor>& inputs,
                              autograd::GradcheckOptions options = {}) {
  require_ok(autograd::gradcheck(f, inputs, options));
}

// ||a - b|| / max(||b||, tiny), over all elements, computed in f64 on the host.
inline double relative_error(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  if (x.size() != y.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  if (std::isnan(num)) return INFINITY;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

// ||a - b|| / max(||b||, 0.05 ||scale_ref||): where every query sees only itself (T = 1,
// window 1) the attention gradients dq and dk are exactly zero in exact arithmetic and only
// rounding noise is left, so the error is measured against the size of a sibling gradient
// (dv) instead.
inline double grad_error(const Tensor& a, const Tensor& b, const Tensor& scale_ref) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>(), z = scale_ref.to_vector<double>();
  double num = 0, den = 0, ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (x[i] - y[i]) * (x[i] - y[i]);
    den += y[i] * y[i];
  }
  for (double v : z) ref += v * v;
  if (std::isnan(num) || x.size() != y.size()) return INFINITY;
  return std::sqrt(num) / std::max({std::sqrt(den), 0.05 * std::sqrt(ref), 1e-30});
}

inline double max_abs_difference(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double m = x.size() == y.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

// sum_i a_i * b_i in f64: a scalar function of a tensor for gradient checks (d/da = b).
inline double dot(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

// A seeded random normal tensor.
inline Tensor random_normal(const Shape& shape, uint64_t seed, DType dtype = DType::f32,
                            Device device = Device::cpu(), double stddev = 1.0) {
  Generator gen(seed);
  return randn(shape, gen, dtype, device, 0.0, stddev);
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.nbytes() != b.nbytes() || a.dtype() != b.dtype()) return false;
  Tensor x = a.to(Device::cpu()), y = b.to(Device::cpu());
  return std::equal(static_cast<const char*>(x.raw()), static_cast<const char*>(x.raw()) + x.nbytes(),
                    static_cast<const char*>(y.raw()));
}

}  // namespace coil::test
