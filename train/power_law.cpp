#include "train/power_law.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace coil::train {

double PowerLawFit::predict(double x) const { return a * std::pow(x, -b) + c; }

namespace {

// Least squares of log(loss - c) on log x.
PowerLawFit fit_fixed_constant(const std::vector<double>& x, const std::vector<double>& loss, double c) {
  size_t n = x.size();
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < n; ++i) {
    double lx = std::log(x[i]), ly = std::log(loss[i] - c);
    sx += lx, sy += ly, sxx += lx * lx, sxy += lx * ly;
  }
  double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
  double intercept = (sy - slope * sx) / double(n);
  PowerLawFit fit{std::exp(intercept), -slope, c, 0};
  double err = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = std::log(fit.predict(x[i])) - std::log(loss[i]);
    err += d * d;
  }
  fit.rmse_log = std::sqrt(err / double(n));
  return fit;
}

}  // namespace

PowerLawFit fit_power_law(const std::vector<double>& x, const std::vector<double>& loss, bool with_constant) {
  COIL_CHECK(x.size() == loss.size(), "fit_power_law: {} x values for {} losses", x.size(), loss.size());
  size_t needed = with_constant ? 3 : 2;
  COIL_CHECK(x.size() >= needed, "fit_power_law: {} points; a fit{} needs at least {}", x.size(),
             with_constant ? " with a constant" : "", needed);
  for (size_t i = 0; i < x.size(); ++i)
    COIL_CHECK(x[i] > 0 && loss[i] > 0 && std::isfinite(x[i]) && std::isfinite(loss[i]),
               "fit_power_law: point {} (x={}, loss={}) must be positive and finite", i, x[i], loss[i]);
  bool distinct = std::any_of(x.begin(), x.end(), [&](double v) { return v != x[0]; });
  COIL_CHECK(distinct, "fit_power_law: every point has the same x ({})", x[0]);
  if (!with_constant) return fit_fixed_constant(x, loss, 0.0);

  double min_loss = *std::min_element(loss.begin(), loss.end());
  PowerLawFit best = fit_fixed_constant(x, loss, 0.0);
  const int steps = 4000;
  for (int k = 1; k < steps; ++k) {
    PowerLawFit f = fit_fixed_constant(x, loss, min_loss * k / steps);
    if (f.rmse_log < best.rmse_log) best = f;
  }
  return best;
}

}  // namespace coil::train
