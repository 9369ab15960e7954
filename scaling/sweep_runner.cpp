#include "scaling/sweep_runner.h"

#include <fmt/format.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>

#include "core/error.h"
#include "dist/process.h"
#include "scaling/report.h"
#include "train/trainer.h"

namespace coil::scaling {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// Signals the sweep received; the waiting loop passes each one on to the running run.
std::atomic<int> g_signals{0};
std::atomic<int> g_last_signal{0};

extern "C" void on_sweep_signal(int sig) {
  g_last_signal = sig;
  g_signals.fetch_add(1);
}

// Waits for the child, passing on the sweep's signals and, once the deadline has passed, one
// SIGINT. Returns its exit status (128 + signal when a signal ended it).
int wait_child(pid_t pid, Clock::time_point deadline, bool has_deadline, SweepResult& result) {
  int passed_on = 0;
  bool deadline_sent = false;
  while (true) {
    int status = 0;
    pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return dist::exit_status(status);
    COIL_CHECK(done == 0 || errno == EINTR, "sweep: waiting for run process {} failed", pid);
    for (int n = g_signals.load(); passed_on < n; ++passed_on) {
      result.signal = g_last_signal.load();
      kill(pid, result.signal);
    }
    if (has_deadline && !deadline_sent && Clock::now() >= deadline) {
      result.time_limit_reached = true;
      deadline_sent = true;
      kill(pid, SIGINT);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// A finished run directory is skipped only if it holds the sweep's run (device and dtype as the
// trainer resolved them).
std::vector<std::string> differences(const std::string& run_dir, train::Config wanted) {
  train::Config existing = train::load_run_config(run_dir);
  if (wanted.train.device == "auto") wanted.train.device = existing.train.device;
  using layers::ComputeDType;
  if (wanted.train.dtype == ComputeDType::automatic) wanted.train.dtype = existing.train.dtype;
  if (wanted.model.config.dtype == ComputeDType::automatic) wanted.model.config.dtype = existing.model.config.dtype;
  auto diffs = train::config_differences(existing, wanted, true);
  if (existing.train.steps != wanted.train.steps)
    diffs.push_back(fmt::format("train.steps: {} -> {}", existing.train.steps, wanted.train.steps));
  return diffs;
}

// What a run directory needs: "skipped" (it holds the same run, finished), "resumed" (it has
// a checkpoint, or finished with fewer or more steps), "started", or a failure (it holds a
// finished run of another config). from_step: the checkpoint a resumption starts from.
SweepRunOutcome plan_run(const SweepRun& run, const train::Config& config, int64_t& from_step) {
  SweepRunOutcome o;
  o.name = run.name;
  o.run_dir = run.run_dir;
  RunRecord before = read_run(run.run_dir);
  from_step = before.checkpoint_step;
  if (before.status != "finished") {
    o.action = from_step >= 0 ? "resumed" : "started";
    return o;
  }
  std::vector<std::string> diffs;
  try {
    diffs = differences(run.run_dir, config);
  } catch (const std::exception& e) {
    diffs.push_back(e.what());
  }
  if (diffs.empty()) {
    o.action = "skipped";
    o.outcome = "finished";
  } else if (diffs.size() == 1 && diffs[0].rfind("train.steps:", 0) == 0) {
    o.action = "resumed";  // more (or fewer) steps asked for: the trainer continues it
    from_step = before.steps;
  } else {
    o.action = "not started";
    o.outcome = "failed";
    o.problem = fmt::format("{} holds a finished run with another config (delete it to run this one):", run.run_dir);
    for (auto& d : diffs) o.problem += "\n    " + d;
  }
  return o;
}

// One sweep process's claim on a run: an exclusive flock(2) on RUN_DIR.lock, held while the
// sweep trains the run, so that several `coil sweep` of one file (one a GPU, or one a node on a
// shared file system with working locks) share its runs out: each trains the next run nobody
// else holds. The kernel drops the lock when the process dies; the file stays.
class RunClaim {
 public:
  explicit RunClaim(const std::string& run_dir) {
    const fs::path lock = run_dir + ".lock";
    if (lock.has_parent_path()) fs::create_directories(lock.parent_path());
    fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    COIL_CHECK(fd_ >= 0, "sweep: cannot open the lock file {}: {}", lock.string(), std::strerror(errno));
    held_ = ::flock(fd_, LOCK_EX | LOCK_NB) == 0;
    COIL_CHECK(held_ || errno == EWOULDBLOCK, "sweep: cannot lock {}: {}", lock.string(), std::strerror(errno));
  }
  ~RunClaim() { ::close(fd_); }
  RunClaim(const RunClaim&) = delete;
  RunClaim& operator=(const RunClaim&) = delete;
  bool held() const { return held_; }

 private:
  int fd_ = -1;
  bool held_ = false;
};

void tally(SweepResult& r, const SweepRunOutcome& o) {
  if (o.outcome == "finished") r.finished += 1;
  if (o.action == "skipped") r.skipped += 1;
  if (o.outcome == "interrupted") r.interrupted += 1;
  if (o.outcome == "failed") r.failed += 1;
  if (o.outcome == "not started") r.not_started += 1;
  if (o.outcome == "elsewhere") r.elsewhere += 1;
}

}  // namespace

int SweepResult::exit_code() const {
  if (signal) return 128 + signal;
  if (time_limit_reached && finished + elsewhere < int(runs.size())) return 3;
  return failed ? 1 : 0;
}

SweepResult run_sweep(const Sweep& sweep, const SweepOptions& options) {
  auto print = options.print ? options.print : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  const std::vector<train::Config> configs = check_sweep(sweep);
  const std::string program = options.program.empty() ? "/proc/self/exe" : options.program;
  const auto start = Clock::now();
  const bool has_deadline = options.time_limit_s > 0;
  const auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.time_limit_s));
  g_signals = 0;
  g_last_signal = 0;
  dist::SignalHandlerScope signals(on_sweep_signal);
  SweepResult result;
  const size_t n = sweep.runs.size();
  for (size_t i = 0; i < n; ++i) {
    const SweepRun& run = sweep.runs[i];
    const std::string tag = fmt::format("sweep: run {}/{} {}", i + 1, n, run.name);
    if (g_signals.load() > 0 && !result.signal) result.signal = g_last_signal.load();
    result.time_limit_reached |= has_deadline && Clock::now() >= deadline;
    SweepRunOutcome o;
    int64_t from_step = -1;
    // A run is claimed only while the sweep may still start runs (no lock files for the rest).
    std::optional<RunClaim> claim;
    if (!result.signal && !result.time_limit_reached) claim.emplace(run.run_dir);
    if (!claim || claim->held()) {
      o = plan_run(run, configs[i], from_step);
    } else {
      o.name = run.name;
      o.run_dir = run.run_dir;
      o.action = "not started";
      o.outcome = "elsewhere";
    }
    if (o.outcome == "elsewhere") {
      print(fmt::format("{}: another sweep is training it ({}.lock), skipped", tag, run.run_dir));
    } else if (o.action == "skipped") {
      print(fmt::format("{}: finished already ({}), skipped", tag, run.run_dir));
    } else if (o.outcome == "failed") {
      print(fmt::format("{}: {}", tag, o.problem));
    } else if (result.signal || result.time_limit_reached) {
      o.action = o.outcome = "not started";
    } else {
      print(fmt::format("{}: {} ({}){}", tag, o.action == "resumed" ? "resuming" : "starting", run.run_dir,
                        from_step >= 0 ? fmt::format(", from step {}", from_step) : ""));
      dist::ChildOptions child;
      child.own_process_group = true;  // a Ctrl-C reaches the run once, passed on by the sweep
      child.terminate_with_parent = true;  // a checkpoint, then exit, if the sweep dies
      pid_t pid = dist::start_child(program, sweep_train_args(sweep, run), child);
      o.exit_code = wait_child(pid, deadline, has_deadline, result);
      RunRecord after = read_run(run.run_dir);
      if (o.exit_code == 0 && after.status == "finished") {
        o.outcome = "finished";
      } else if (result.signal || result.time_limit_reached) {
        o.outcome = "interrupted";
      } else {
        o.outcome = "failed";
        o.problem = fmt::format("exited with status {}; its directory reads as {}{}", o.exit_code, after.status,
                                after.problem.empty() ? "" : " (" + after.problem + ")");
      }
      print(fmt::format("{}: {}{}", tag, o.outcome, o.problem.empty() ? "" : ": " + o.problem));
    }
    tally(result, o);
    result.runs.push_back(o);
  }
  return result;
}

std::string format_sweep_summary(const SweepResult& r) {
  std::string s = fmt::format("{} runs: {} finished ({} skipped as already finished), {} interrupted, {} failed, {} not "
                              "started",
                              r.runs.size(), r.finished, r.skipped, r.interrupted, r.failed, r.not_started);
  if (r.elsewhere) s += fmt::format(", {} training in another sweep", r.elsewhere);
  if (r.time_limit_reached) s += "; the time limit was reached";
  if (r.signal) s += fmt::format("; stopped by signal {}", r.signal);
  for (const auto& o : r.runs)
    if (o.outcome != "finished" && o.outcome != "elsewhere") s += fmt::format("\n  {}: {}{}", o.name, o.outcome, o.problem.empty() ? "" : ": " + o.problem);
  if (r.interrupted || r.not_started) s += "\nrun the same `coil sweep` again to continue";
  return s;
}

}  // namespace coil::scaling
