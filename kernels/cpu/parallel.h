// The CPU kernels' threads: a parallel for over independent items (OpenMP, libgomp from g++).
//
// Items are cut into fixed blocks of consecutive items whose size depends only on the
// problem (never on the thread count or on timing), and each block runs its items in order.
// A kernel whose blocks write disjoint outputs therefore gives the same bits with one thread
// as with many, run after run: the exact resume of a CPU run relies on that. Nothing is
// summed across blocks here; a kernel that needs a sum over blocks keeps one partial per
// item and adds them in item order after the parallel for.
//
// The thread count is OMP_NUM_THREADS when set, else the cores this process may use;
// set_num_threads changes it for the whole process (tests, benchmarks).
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>

namespace coil::kernels::cpu {

int num_threads();
void set_num_threads(int threads);

// Below about this much work (in a kernel's inner-loop iterations) a block is not worth a thread.
constexpr int64_t kWorkPerBlock = 1 << 16;

// Calls body(begin, end) for the blocks [0, block), [block, 2 block), ... covering [0, n), on
// the CPU threads. An exception thrown in a block is re-thrown here (one of them, when several throw).
template <class F>
void parallel_blocks(int64_t n, int64_t block, F&& body) {
  block = std::max<int64_t>(block, 1);
  const int64_t blocks = (n + block - 1) / block;
  if (blocks <= 1) {
    if (n > 0) body(int64_t(0), n);
    return;
  }
  std::exception_ptr error;
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t i = 0; i < blocks; ++i) {
    try {
      body(i * block, std::min(n, (i + 1) * block));
    } catch (...) {
#pragma omp critical(coil_parallel_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

// The same with blocks of about kWorkPerBlock, given the work of one item.
template <class F>
void parallel_for(int64_t n, int64_t work_per_item, F&& body) {
  parallel_blocks(n, kWorkPerBlock / std::max<int64_t>(work_per_item, 1), body);
}

}  // namespace coil::kernels::cpu
