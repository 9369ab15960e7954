#include <cmath>

#include "tests/catch.h"
#include "train/power_law.h"

using namespace coil::train;

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
