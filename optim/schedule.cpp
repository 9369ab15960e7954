#include "optim/schedule.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace coil::optim {

ScheduleKind parse_schedule_kind(const std::string& name) {
  if (name == "constant") return ScheduleKind::constant;
  if (name == "cosine") return ScheduleKind::cosine;
  if (name == "linear") return ScheduleKind::linear;
  fail("schedule: unknown kind '{}' (expected constant, cosine or linear)", name);
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::constant: return "constant";
    case ScheduleKind::cosine: return "cosine";
    case ScheduleKind::linear: return "linear";
  }
  return "?";
}

void validate(const Schedule& s) {
  COIL_CHECK(s.lr >= 0 && std::isfinite(s.lr), "schedule: lr must be finite and >= 0, got {}", s.lr);
  COIL_CHECK(s.min_lr >= 0 && s.min_lr <= s.lr, "schedule: min_lr must be in [0, lr = {}], got {}", s.lr, s.min_lr);
  COIL_CHECK(s.warmup_steps >= 0, "schedule: warmup_steps must be >= 0, got {}", s.warmup_steps);
  if (s.kind != ScheduleKind::constant)
    COIL_CHECK(s.total_steps >= s.warmup_steps,
               "schedule: total_steps ({}) must be at least warmup_steps ({}) for a {} schedule", s.total_steps,
               s.warmup_steps, schedule_kind_name(s.kind));
}

double learning_rate(const Schedule& s, int64_t step) {
  if (step < s.warmup_steps) return s.lr * double(step + 1) / double(s.warmup_steps);
  if (s.kind == ScheduleKind::constant) return s.lr;
  const int64_t span = s.total_steps - s.warmup_steps;
  const double progress = span <= 0 ? 1.0 : std::clamp(double(step - s.warmup_steps) / double(span), 0.0, 1.0);
  if (s.kind == ScheduleKind::linear) return s.lr + (s.min_lr - s.lr) * progress;
  return s.min_lr + (s.lr - s.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace coil::optim
