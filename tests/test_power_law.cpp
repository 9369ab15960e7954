#include <cmath>
#include <random>

#include "scaling/power_law.h"
#include "tests/catch.h"

using namespace coil::scaling;

TEST_CASE("a power law fit recovers a known exponent", "[scaling]") {
  std::vector<double> flops, loss;
  for (double f = 1e15; f <= 1e20; f *= 10) {
    flops.push_back(f);
    loss.push_back(250.0 * std::pow(f, -0.05));
  }
  PowerLawFit fit = fit_power_law(flops, loss, false);
  REQUIRE(fit.b == Approx(0.05).epsilon(1e-9));
  REQUIRE(fit.a == Approx(250.0).epsilon(1e-6));
  REQUIRE(fit.rmse_log < 1e-9);
  REQUIRE(fit.predict(1e21) == Approx(250.0 * std::pow(1e21, -0.05)));
}

TEST_CASE("a power law with an irreducible loss recovers exponent and constant", "[scaling]") {
  std::vector<double> flops, loss;
  for (double f = 1e15; f <= 1e21; f *= 4) {
    flops.push_back(f);
    loss.push_back(1800.0 * std::pow(f, -0.15) + 1.7);
  }
  PowerLawFit fit = fit_power_law(flops, loss, true);
  REQUIRE(fit.c == Approx(1.7).margin(0.01));
  REQUIRE(fit.b == Approx(0.15).margin(0.005));
  REQUIRE(fit.rmse_log < 1e-3);
}

TEST_CASE("power law fits reject inputs they cannot fit", "[scaling]") {
  REQUIRE_THROWS_WITH(fit_power_law({1e15}, {3.0}, false), Catch::Matchers::Contains("needs at least 2"));
  REQUIRE_THROWS_WITH(fit_power_law({1e15, 1e16}, {3.0, -1.0}, false),
                      Catch::Matchers::Contains("point 1"));
  REQUIRE_THROWS_WITH(fit_power_law({1e15, 1e15}, {3.0, 2.0}, false), Catch::Matchers::Contains("same x"));
}

TEST_CASE("Student's t quantiles match the tables", "[scaling]") {
  REQUIRE(student_t_quantile(0.95, 1) == Approx(12.7062).epsilon(1e-5));
  REQUIRE(student_t_quantile(0.95, 3) == Approx(3.18245).epsilon(1e-5));
  REQUIRE(student_t_quantile(0.95, 10) == Approx(2.22814).epsilon(1e-5));
  REQUIRE(student_t_quantile(0.99, 5) == Approx(4.03214).epsilon(1e-5));
  REQUIRE(student_t_quantile(0.95, 100000) == Approx(1.95998).epsilon(1e-4));
  REQUIRE_THROWS_WITH(student_t_quantile(0.95, 0), Catch::Matchers::Contains("degrees of freedom"));
}

namespace {
// n points, a decade apart from 1e15, of loss = a x^-b with Gaussian noise of sd sigma on log loss.
void noisy_law(std::mt19937_64& rng, double a, double b, double sigma, int n, std::vector<double>& x,
               std::vector<double>& loss) {
  std::normal_distribution<double> noise(0.0, sigma);
  x.clear(), loss.clear();
  for (int i = 0; i < n; ++i) {
    x.push_back(1e15 * std::pow(10.0, i));
    loss.push_back(a * std::pow(x.back(), -b) * std::exp(noise(rng)));
  }
}
}  // namespace

TEST_CASE("the exponent's standard error matches its spread over noisy repeats, and its interval covers", "[scaling]") {
  const double b = 0.05, sigma = 0.02;
  const int n = 5, reps = 2000;
  std::mt19937_64 rng(7);
  std::vector<double> x, loss;
  double sum_b = 0, sum_b2 = 0, sum_var = 0;
  int covered = 0;
  const double t = student_t_quantile(0.95, n - 2);
  double sxx = 0;
  for (int r = 0; r < reps; ++r) {
    noisy_law(rng, 250.0, b, sigma, n, x, loss);
    PowerLawFit fit = fit_power_law(x, loss, false);
    REQUIRE(fit.n == n);
    sum_b += fit.b, sum_b2 += fit.b * fit.b, sum_var += fit.b_se * fit.b_se;
    covered += std::fabs(fit.b - b) <= t * fit.b_se;
    sxx = fit.sxx;
  }
  double mean = sum_b / reps, spread = std::sqrt(sum_b2 / reps - mean * mean);
  const double theory = sigma / std::sqrt(sxx);  // sd of the slope: sigma / sqrt(Sxx)
  REQUIRE(sxx == Approx(10 * std::log(10.0) * std::log(10.0)));  // u = 0, ln 10, ..., 4 ln 10
  REQUIRE(mean == Approx(b).margin(3 * theory / std::sqrt(double(reps))));
  REQUIRE(spread == Approx(theory).epsilon(0.06));
  REQUIRE(std::sqrt(sum_var / reps) == Approx(theory).epsilon(0.06));
  REQUIRE(double(covered) / reps == Approx(0.95).margin(0.015));
}

TEST_CASE("fit uncertainty: exact data has none left, two points or a fitted constant give none", "[scaling]") {
  PowerLawFit exact = fit_power_law({1e15, 1e16, 1e17}, {4.0, 3.6, 3.24}, false);
  REQUIRE(exact.b_se == Approx(0).margin(1e-12));
  REQUIRE(exact.log_se(1e16) == Approx(0).margin(1e-12));
  REQUIRE(std::isnan(fit_power_law({1e15, 1e16}, {4.0, 3.6}, false).b_se));
  PowerLawFit with_c = fit_power_law({1e15, 1e16, 1e17, 1e18}, {4.0, 3.5, 3.2, 3.05}, true);
  REQUIRE(std::isnan(with_c.b_se));
  REQUIRE(std::isnan(with_c.log_se(1e16)));
  // The standard error of the fitted line grows away from the centre of the data.
  std::mt19937_64 rng(3);
  std::vector<double> x, loss;
  noisy_law(rng, 100.0, 0.1, 0.01, 4, x, loss);
  PowerLawFit fit = fit_power_law(x, loss, false);
  REQUIRE(fit.log_se(std::sqrt(1e15 * 1e18)) < fit.log_se(1e15));
  REQUIRE(fit.log_se(1e15) < fit.log_se(1e13));
}

TEST_CASE("the crossover of two known power laws, exact and with noise", "[scaling]") {
  // 10 x^-0.1 = 20 x^-0.12 at log x = ln 2 / 0.02.
  const double cross = std::exp(std::log(2.0) / 0.02);
  std::vector<double> x = {1e13, 1e14, 1e15, 1e16, 1e17}, f_loss, g_loss;
  for (double v : x) f_loss.push_back(10 * std::pow(v, -0.1)), g_loss.push_back(20 * std::pow(v, -0.12));
  PowerLawFit f = fit_power_law(x, f_loss, false), g = fit_power_law(x, g_loss, false);
  Crossover c = power_law_crossover(f, g);
  REQUIRE(c.x == Approx(cross).epsilon(1e-6));
  REQUIRE(c.bounded);
  REQUIRE(c.low == Approx(cross).epsilon(1e-4));
  REQUIRE(c.high == Approx(cross).epsilon(1e-4));
  REQUIRE(power_law_crossover(g, f).x == Approx(cross).epsilon(1e-6));

  // With noise the 95% set holds the true crossover about 95% of the time (conservatively).
  std::mt19937_64 rng(11);
  const int reps = 1000;
  int covered = 0, bounded = 0;
  std::vector<double> fx, fy, gx, gy;
  for (int r = 0; r < reps; ++r) {
    noisy_law(rng, 10, 0.1, 0.01, 5, fx, fy);
    noisy_law(rng, 20, 0.12, 0.01, 5, gx, gy);
    Crossover k = power_law_crossover(fit_power_law(fx, fy, false), fit_power_law(gx, gy, false));
    bounded += k.bounded;
    bool in = k.bounded ? k.low <= cross && cross <= k.high : !(k.differ_low < cross && cross < k.differ_high);
    covered += in;
  }
  REQUIRE(bounded > reps / 2);  // slopes 0.02 apart with sd ~0.002: mostly placed
  REQUIRE(double(covered) / reps >= 0.94);
  REQUIRE(double(covered) / reps <= 0.995);

  // Equal exponents, one law 30% above the other: the data cannot place a crossover, and the
  // fits differ significantly across the fitted range.
  noisy_law(rng, 10, 0.1, 0.01, 5, fx, fy);
  noisy_law(rng, 13, 0.1, 0.01, 5, gx, gy);
  Crossover p = power_law_crossover(fit_power_law(fx, fy, false), fit_power_law(gx, gy, false));
  REQUIRE_FALSE(p.bounded);
  REQUIRE(p.differ_low < 1e15);
  REQUIRE(p.differ_high > 1e19);

  REQUIRE_THROWS_WITH(power_law_crossover(fit_power_law({1e15, 1e16}, {4.0, 3.6}, false), g),
                      Catch::Matchers::Contains("3 points or more"));
}
