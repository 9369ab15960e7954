// gradcheck: compares the analytic gradients of f with central differences, in f64 on the
// CPU. With y = f(inputs) and a random weighting w of y's elements, it checks
// d(sum(w*y))/dx_i from backward against (f(x + eps e_i) - f(x - eps e_i)) . w / (2 eps)
// for every element of every floating input. Integer inputs (indices) pass through as they are.
#pragma once
#include <functional>
#include <string>

#include "autograd/variable.h"

namespace coil::autograd {

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0;
  std::string message;  // the worst element, or what failed
};

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-6;
  double rtol = 1e-4;
  uint64_t seed = 0;
};

using DifferentiableFn = std::function<Variable(const std::vector<Variable>&)>;

GradcheckResult gradcheck(const DifferentiableFn& f, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options = {});

}  // namespace coil::autograd
