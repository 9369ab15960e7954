// The optimizer's defaults, one place each: AdamWOptions, the schedule and a run's `optim:`
// section (train/config.h) take them from here.
#pragma once

namespace coil::optim {

inline constexpr double kDefaultLr = 6e-4;
inline constexpr double kDefaultBeta1 = 0.9;
inline constexpr double kDefaultBeta2 = 0.95;
inline constexpr double kDefaultEps = 1e-8;

}  // namespace coil::optim
