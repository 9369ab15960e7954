#include "scaling/power_law.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace coil::scaling {

double PowerLawFit::predict(double x) const { return a * std::pow(x, -b) + c; }

double PowerLawFit::log_se(double x) const {
  if (!std::isfinite(residual_var)) return std::numeric_limits<double>::quiet_NaN();
  double d = std::log(x) - mean_log_x;
  return std::sqrt(residual_var * (1.0 / n + d * d / sxx));
}

double PowerLawFit::b_margin(double confidence) const {
  return std::isfinite(b_se) ? student_t_quantile(confidence, dof()) * b_se : std::numeric_limits<double>::quiet_NaN();
}

double PowerLawFit::log_margin(double x, double confidence) const {
  double se = log_se(x);
  return std::isfinite(se) ? student_t_quantile(confidence, dof()) * se : se;
}

namespace {

// Least squares of log(loss - c) on log x, with the line's standard errors (3 points or more).
PowerLawFit fit_fixed_constant(const std::vector<double>& x, const std::vector<double>& loss, double c) {
  const size_t n = x.size();
  double mean_u = 0, mean_y = 0;
  for (size_t i = 0; i < n; ++i) mean_u += std::log(x[i]), mean_y += std::log(loss[i] - c);
  mean_u /= double(n), mean_y /= double(n);
  double sxx = 0, sxy = 0;
  for (size_t i = 0; i < n; ++i) {
    double du = std::log(x[i]) - mean_u;
    sxx += du * du, sxy += du * (std::log(loss[i] - c) - mean_y);
  }
  const double slope = sxy / sxx;
  PowerLawFit fit;
  fit.a = std::exp(mean_y - slope * mean_u);
  fit.b = -slope;
  fit.c = c;
  fit.n = int(n);
  fit.mean_log_x = mean_u;
  fit.sxx = sxx;
  double err = 0, line_err = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = std::log(fit.predict(x[i])) - std::log(loss[i]);
    double r = std::log(loss[i] - c) - (mean_y + slope * (std::log(x[i]) - mean_u));
    err += d * d, line_err += r * r;
  }
  fit.rmse_log = std::sqrt(err / double(n));
  if (n >= 3) {
    fit.residual_var = line_err / double(n - 2);
    fit.b_se = std::sqrt(fit.residual_var / sxx);
  }
  return fit;
}

// The regularized incomplete beta function I_x(a, b), by its continued fraction (modified Lentz).
double incomplete_beta(double x, double a, double b) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  if (x > (a + 1) / (a + b + 2)) return 1 - incomplete_beta(1 - x, b, a);
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) +
                                b * std::log1p(-x)) / a;
  const double tiny = 1e-300;
  double f = 1, c = 1, d = 1 - (a + b) * x / (a + 1);
  d = 1 / (std::fabs(d) < tiny ? tiny : d);
  f = d;
  for (int m = 1; m <= 300; ++m) {
    for (int odd = 0; odd < 2; ++odd) {
      double num = odd ? -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
                       : m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m));
      d = 1 + num * d;
      d = 1 / (std::fabs(d) < tiny ? tiny : d);
      c = 1 + num / c;
      if (std::fabs(c) < tiny) c = tiny;
      f *= c * d;
      if (odd && std::fabs(c * d - 1) < 1e-15) return front * f;
    }
  }
  return front * f;
}

// P(|T| <= t) for Student's t with dof degrees of freedom.
double t_central_probability(double t, int dof) {
  double v = double(dof);
  return 1 - incomplete_beta(v / (v + t * t), v / 2, 0.5);
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
  // The line's errors would treat the fitted c as known: no uncertainty for this form.
  best.residual_var = best.b_se = std::numeric_limits<double>::quiet_NaN();
  return best;
}

double student_t_quantile(double confidence, int dof) {
  COIL_CHECK(confidence > 0 && confidence < 1, "student_t_quantile: confidence {} is not in (0, 1)", confidence);
  COIL_CHECK(dof >= 1, "student_t_quantile: {} degrees of freedom (needs at least 1)", dof);
  double lo = 0, hi = 1;
  while (t_central_probability(hi, dof) < confidence) hi *= 2;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; ++i) {
    double mid = 0.5 * (lo + hi);
    (t_central_probability(mid, dof) < confidence ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

Crossover power_law_crossover(const PowerLawFit& f, const PowerLawFit& g, double confidence) {
  COIL_CHECK(f.c == 0 && g.c == 0, "power_law_crossover: fits with an irreducible loss are not straight lines in "
             "log-log; the crossover is computed for plain power laws");
  COIL_CHECK(std::isfinite(f.residual_var) && std::isfinite(g.residual_var),
             "power_law_crossover: both fits need 3 points or more for an uncertainty ({} and {})", f.n, g.n);
  // In u = log x - u0 (u0 keeps the numbers small): log f - log g = d0 + d1 u.
  const double u0 = 0.5 * (f.mean_log_x + g.mean_log_x);
  const double d1 = g.b - f.b;
  const double d0 = std::log(f.a) - std::log(g.a) - (f.b - g.b) * u0;
  // The variance of the difference, k2 u^2 + k1 u + k0: each fit's s^2 (1/n + (u - m)^2 / Sxx).
  double k2 = 0, k1 = 0, k0 = 0;
  for (const PowerLawFit* p : {&f, &g}) {
    double m = p->mean_log_x - u0, w = p->residual_var / p->sxx;
    k2 += w, k1 += -2 * w * m, k0 += p->residual_var / p->n + w * m * m;
  }
  const double t = student_t_quantile(confidence, std::min(f.dof(), g.dof()));
  const double t2 = t * t;
  Crossover out;
  if (d1 != 0) out.x = std::exp(u0 - d0 / d1);
  // Fieller: the confidence set is where (d0 + d1 u)^2 <= t^2 var(u), i.e. A u^2 + B u + C <= 0.
  const double A = d1 * d1 - t2 * k2, B = 2 * d0 * d1 - t2 * k1, C = d0 * d0 - t2 * k0;
  const double disc = B * B - 4 * A * C;
  if (A > 0) {
    double root = std::sqrt(std::max(0.0, disc));
    out.bounded = true;
    out.low = std::exp(u0 + (-B - root) / (2 * A));
    out.high = std::exp(u0 + (-B + root) / (2 * A));
  } else if (A < 0 && disc > 0) {
    double root = std::sqrt(disc);
    out.differ_low = std::exp(u0 + (-B + root) / (2 * A));
    out.differ_high = std::exp(u0 + (-B - root) / (2 * A));
  }
  return out;
}

}  // namespace coil::scaling
