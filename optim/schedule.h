// Learning-rate schedules: pure functions of the step (0-based: the step about to be taken),
// so a resumed run recomputes the same values from its step count alone.
//
//   warmup (all kinds): lr * (step + 1) / warmup_steps for step < warmup_steps
//   constant:           lr afterwards (with warmup_steps = 0: lr throughout)
//   cosine:             min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2
//   linear:             lr + (min_lr - lr) * progress
//   with progress = (step - warmup_steps) / (total_steps - warmup_steps), clamped to [0, 1]
//   (min_lr from the end of the decay on).
#pragma once
#include <cstdint>
#include <string>

#include "optim/defaults.h"

namespace coil::optim {

enum class ScheduleKind { constant, cosine, linear };

struct Schedule {
  ScheduleKind kind = ScheduleKind::cosine;
  double lr = kDefaultLr;
  double min_lr = 0.0;
  int64_t warmup_steps = 0;
  int64_t total_steps = 0;  // the decay ends here (cosine, linear)
};

// "constant", "cosine", "linear"; anything else is an error listing them.
ScheduleKind parse_schedule_kind(const std::string& name);
const char* schedule_kind_name(ScheduleKind kind);
// Raises an error naming the field when the schedule is inconsistent.
void validate(const Schedule& s);

double learning_rate(const Schedule& s, int64_t step);

}  // namespace coil::optim
