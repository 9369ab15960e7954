#include "autograd/gradcheck.h"

#include <cmath>

#include "core/random.h"

namespace coil::autograd {
namespace {

double weighted_sum(const Tensor& y, const std::vector<double>& w) {
  std::vector<double> values = y.to_vector<double>();
  double s = 0;
  for (size_t i = 0; i < values.size(); ++i) s += values[i] * w[i];
  return s;
}

}  // namespace

GradcheckResult gradcheck(const DifferentiableFn& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options) {
  GradcheckResult result;
  std::vector<Variable> vars;
  for (const Tensor& t : inputs) {
    bool differentiable = t.defined() && is_floating(t.dtype());
    if (differentiable)
      COIL_CHECK(t.dtype() == DType::f64 && t.device().is_cpu(),
                 "gradcheck: floating inputs must be f64 on the CPU, got {}", describe(t));
    vars.push_back(t.defined() ? Variable(t.clone(), differentiable) : Variable());
  }

  Variable y = f(vars);
  Generator gen(options.seed);
  Tensor w = uniform(y.shape(), -1.0, 1.0, gen, DType::f64);
  std::vector<double> weights = w.to_vector<double>();
  y.backward(w);

  for (size_t k = 0; k < vars.size(); ++k) {
    if (!vars[k].defined() || !vars[k].requires_grad()) continue;
    Tensor x = vars[k].value();
    Tensor analytic = vars[k].grad();
    std::vector<double> a = analytic.defined() ? analytic.to_vector<double>()
                                               : std::vector<double>(size_t(x.numel()), 0.0);
    double* xp = x.data<double>();
    NoGradGuard no_grad;
    for (int64_t i = 0; i < x.numel(); ++i) {
      double saved = xp[i];
      std::vector<Variable> plain;
      for (const Variable& v : vars) plain.push_back(v.defined() ? v.detach() : v);
      xp[i] = saved + options.eps;
      double up = weighted_sum(f(plain).value(), weights);
      xp[i] = saved - options.eps;
      double down = weighted_sum(f(plain).value(), weights);
      xp[i] = saved;
      double numeric = (up - down) / (2 * options.eps);
      double err = std::abs(numeric - a[size_t(i)]);
      if (err > result.max_abs_error) result.max_abs_error = err;
      if (err > options.atol + options.rtol * std::abs(numeric) && result.ok) {
        result.ok = false;
        result.message = fmt::format("input {} element {}: analytic {:.10g}, numeric {:.10g}", k, i,
                                     a[size_t(i)], numeric);
      }
    }
  }
  if (result.ok) result.message = fmt::format("max abs error {:.3g}", result.max_abs_error);
  return result;
}

}  // namespace coil::autograd
