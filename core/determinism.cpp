#include "core/determinism.h"

#include <atomic>

namespace coil {
namespace {
std::atomic<bool> deterministic_mode{false};
}

bool deterministic() { return deterministic_mode.load(std::memory_order_relaxed); }
void set_deterministic(bool on) { deterministic_mode.store(on, std::memory_order_relaxed); }

}  // namespace coil
