// Scaling-law fits: loss = a * x^(-b), or loss = a * x^(-b) + c with an irreducible loss c.
// Without c the fit is least squares on log loss = log a - b log x. With c, the exponent
// and scale are fitted the same way for each c on a fine grid in [0, min loss), keeping the
// c with the smallest squared error in log space (a one-dimensional search over a convex-ish
// profile, robust for the few points a sweep has).
#pragma once
#include <vector>

namespace coil::train {

struct PowerLawFit {
  double a = 0, b = 0, c = 0;
  double rmse_log = 0;  // root-mean-square error of log(loss)
  double predict(double x) const;
};

PowerLawFit fit_power_law(const std::vector<double>& x, const std::vector<double>& loss,
                          bool with_constant);

}  // namespace coil::train
