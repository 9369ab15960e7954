// Scaling-law fits: loss = a * x^(-b), or loss = a * x^(-b) + c with an irreducible loss c.
// Without c the fit is least squares on log loss = log a - b log x. With c, the exponent
// and scale are fitted the same way for each c on a fine grid in [0, min loss), keeping the
// c with the smallest squared error in log space (a one-dimensional search over a convex-ish
// profile, robust for the few points a sweep has).
//
// Uncertainty (the plain power law; with c fitted it is left unset, since the line's standard
// errors would ignore c's own): the ordinary least-squares errors of the line
// log(loss - c) = log a - b u in u = log x, from the residual variance s^2 = SSE / (n - 2):
//   se(b) = s / sqrt(Sxx),  se(fitted log(loss - c) at u) = s * sqrt(1/n + (u - mean u)^2 / Sxx),
// Sxx = sum (u - mean u)^2, with Student's t on n - 2 degrees of freedom for intervals (so a
// fit needs 3 points for an uncertainty; with 2 the line passes through both).
//
// Crossover of two such laws f, g: log f - log g = d0 + d1 u is linear in u, so the laws cross
// once (or never, if parallel) at u* = -d0 / d1. Its confidence set is Fieller's: the u where
// the difference is within t * se of zero, se^2(u) = se_f^2(u) + se_g^2(u) (independent fits),
// t on min(n_f, n_g) - 2 degrees of freedom (conservative). That is an interval around u* when
// the slopes differ by more than their uncertainty, and unbounded otherwise (the data cannot
// place a crossover).
#pragma once
#include <limits>
#include <vector>

namespace coil::scaling {

struct PowerLawFit {
  double a = 0, b = 0, c = 0;
  double rmse_log = 0;  // root-mean-square error of log(loss)
  int n = 0;            // points fitted
  // The least-squares line's uncertainty (NaN for fits with a constant or of 2 points):
  double mean_log_x = 0, sxx = 0;  // centre and spread (sum of squared deviations) of log x
  double residual_var = std::numeric_limits<double>::quiet_NaN();  // s^2 of log(loss - c)
  double b_se = std::numeric_limits<double>::quiet_NaN();          // standard error of b
  double predict(double x) const;
  // The standard error of the fitted log(loss - c) at x (NaN when the fit has none).
  double log_se(double x) const;
  int dof() const { return n - 2; }
  // Half-widths of confidence intervals (t on dof() degrees of freedom; NaN without an
  // uncertainty): of b, and of the fitted log(loss - c) at x.
  double b_margin(double confidence = 0.95) const;
  double log_margin(double x, double confidence = 0.95) const;
};

PowerLawFit fit_power_law(const std::vector<double>& x, const std::vector<double>& loss,
                          bool with_constant);

// t such that P(|T| <= t) = confidence for Student's t with `dof` degrees of freedom.
double student_t_quantile(double confidence, int dof);

struct Crossover {
  static constexpr double kNone = std::numeric_limits<double>::quiet_NaN();
  double x = kNone;  // where the two laws are equal (NaN when they are parallel)
  // The confidence set of x: the interval [low, high] when bounded. When it is not (the slopes
  // do not differ by more than their uncertainty), [differ_low, differ_high] is where the two
  // fits do differ significantly (NaN: nowhere).
  bool bounded = false;
  double low = kNone, high = kNone;
  double differ_low = kNone, differ_high = kNone;
};

// The crossover of two plain power laws (c = 0) with their uncertainty (both need 3 points);
// an error for fits with a constant.
Crossover power_law_crossover(const PowerLawFit& f, const PowerLawFit& g, double confidence = 0.95);

}  // namespace coil::scaling
