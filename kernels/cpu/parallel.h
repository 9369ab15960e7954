// The CPU kernels' threads: a parallel for over independent items, on a small pool of threads.
//
// Items are cut into fixed blocks of consecutive items whose size depends only on the
// problem (never on the thread count or on timing), and each block runs its items in order.
// A kernel whose blocks write disjoint outputs therefore gives the same bits with one thread
// as with many, run after run: the exact resume of a CPU run relies on that. Nothing is
// summed across blocks here; a kernel that needs a sum over blocks keeps one partial per
// item and adds them in item order after the parallel for.
//
// The calling thread runs blocks too; idle pool threads sleep (they never spin, so they take
// nothing from other processes on a shared machine). A parallel for inside a block, or while
// another thread's parallel for holds the pool, runs on its own thread, in order.
// The thread count is COIL_CPU_THREADS when set, else the cores this process may run on;
// set_num_threads changes it (tests, benchmarks).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>

namespace coil::kernels::cpu {

int num_threads();
void set_num_threads(int threads);

// Below about this much work (in a kernel's inner-loop iterations) a block is not worth a thread.
constexpr int64_t kWorkPerBlock = 1 << 16;

// Runs run_block(i) for every i in [0, blocks) on the pool and the calling thread, and returns
// when all have run. An exception thrown in a block is re-thrown here (one of them, when
// several throw); the other blocks still run.
void run_blocks(int64_t blocks, const std::function<void(int64_t)>& run_block);

// Calls body(begin, end) for the blocks [0, block), [block, 2 block), ... covering [0, n).
template <class F>
void parallel_blocks(int64_t n, int64_t block, F&& body) {
  block = std::max<int64_t>(block, 1);
  const int64_t blocks = (n + block - 1) / block;
  if (blocks <= 1) {
    if (n > 0) body(int64_t(0), n);
    return;
  }
  run_blocks(blocks, [&](int64_t i) { body(i * block, std::min(n, (i + 1) * block)); });
}

// The same with blocks of about kWorkPerBlock, given the work of one item.
template <class F>
void parallel_for(int64_t n, int64_t work_per_item, F&& body) {
  parallel_blocks(n, kWorkPerBlock / std::max<int64_t>(work_per_item, 1), body);
}

}  // namespace coil::kernels::cpu
