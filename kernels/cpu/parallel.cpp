#include "kernels/cpu/parallel.h"

#include <sched.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"

namespace coil::kernels::cpu {
namespace {

// COIL_CPU_THREADS, else the CPUs in this process's affinity mask.
int default_threads() {
  if (const char* text = std::getenv("COIL_CPU_THREADS")) {
    char* end = nullptr;
    long n = std::strtol(text, &end, 10);
    COIL_CHECK(end != text && *end == '\0' && n >= 1 && n <= 1024,
               "COIL_CPU_THREADS must be a whole number from 1 to 1024, got '{}'", text);
    return int(n);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

std::atomic<int> g_threads{0};  // 0: not yet read

// Set while this thread runs a block: a parallel for inside it runs in order on this thread.
thread_local bool t_in_block = false;

// One parallel for: its blocks are claimed through `next`; `done` and `error` change under the
// pool's mutex. Workers hold it by shared_ptr, so one that wakes after the job ended finds no
// block left and never touches run_block.
struct Job {
  const std::function<void(int64_t)>* run_block = nullptr;
  int64_t blocks = 0;
  std::atomic<int64_t> next{0};
  int64_t done = 0;
  std::exception_ptr error;
};

class Pool {
 public:
  ~Pool() { resize(0); }

  // False when the pool is busy with another thread's job (then the caller runs alone).
  bool run(int64_t blocks, const std::function<void(int64_t)>& run_block) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy) return false;
    resize(num_threads() - 1);
    auto job = std::make_shared<Job>();
    job->run_block = &run_block;
    job->blocks = blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
      ++generation_;
    }
    wake_.notify_all();
    take_blocks(*job);
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return job->done == job->blocks; });
    job_.reset();
    if (job->error) std::rethrow_exception(job->error);
    return true;
  }

 private:
  void take_blocks(Job& job) {
    int64_t ran = 0;
    std::exception_ptr error;
    t_in_block = true;
    for (int64_t i = job.next++; i < job.blocks; i = job.next++, ++ran) {
      try {
        (*job.run_block)(i);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    t_in_block = false;
    if (ran == 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    job.done += ran;
    if (error && !job.error) job.error = error;
    if (job.done == job.blocks) finished_.notify_all();
  }

  void work(uint64_t seen) {
    while (true) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
      }
      if (job) take_blocks(*job);
    }
  }

  // Only with busy_ held (or at exit).
  void resize(int workers) {
    if (int(workers_.size()) == workers) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = false;
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this, seen = generation_] { work(seen); });
  }

  std::mutex busy_;   // held by the thread whose job runs
  std::mutex mutex_;  // the fields below
  std::condition_variable wake_, finished_;
  std::shared_ptr<Job> job_;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int num_threads() {
  int n = g_threads.load();
  if (n == 0) {
    n = default_threads();
    g_threads.store(n);
  }
  return n;
}

void set_num_threads(int threads) {
  COIL_CHECK(threads >= 1, "set_num_threads: the CPU thread count must be at least 1, got {}", threads);
  g_threads.store(threads);
}

void run_blocks(int64_t blocks, const std::function<void(int64_t)>& run_block) {
  if (blocks > 1 && num_threads() > 1 && !t_in_block && pool().run(blocks, run_block)) return;
  std::exception_ptr error;
  for (int64_t i = 0; i < blocks; ++i) {
    try {
      run_block(i);
    } catch (...) {
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace coil::kernels::cpu
