#include "kernels/cpu/parallel.h"

#include <omp.h>

#include <atomic>

#include "core/error.h"

namespace coil::kernels::cpu {
namespace {
std::atomic<int> g_threads{0};  // 0: not yet read from OpenMP
}

int num_threads() {
  int n = g_threads.load();
  if (n == 0) {
    n = std::max(1, omp_get_max_threads());
    g_threads.store(n);
  }
  return n;
}

void set_num_threads(int threads) {
  COIL_CHECK(threads >= 1, "set_num_threads: the CPU thread count must be at least 1, got {}", threads);
  g_threads.store(threads);
}

}  // namespace coil::kernels::cpu
