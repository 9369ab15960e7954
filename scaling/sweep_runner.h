// `coil sweep FILE`: runs a sweep's runs (scaling/sweep.h) one after another, each as a child
// process of the same program (`coil train BASE --set ...`, what `coil sweep --print` prints),
// so that every run starts from a clean process and one failing run does not end the others.
//
//   SweepResult r = run_sweep(load_sweep("configs/scaling/small.yaml"), {});
//
// Every run's config is checked before anything runs. Then, for each run:
//   finished     (its metrics reach train.steps with the final evaluation, scaling/report.h,
//                and its config.yaml is the sweep's run) skipped
//   interrupted  resumed: the trainer continues a run directory that holds the same run from
//                its latest checkpoint (from the start if it has none)
//   not started  started
//   a directory holding a different run (another config) fails, as `coil train` does.
// A run that fails is reported and the sweep goes on with the next one.
//
// Several sweeps of one file at once (one a GPU: CUDA_VISIBLE_DEVICES=i coil sweep FILE &) share
// its runs out: a sweep holds a lock on RUN_DIR.lock while it trains a run, and the others pass
// over a locked run ("elsewhere") to the next. Each trains the next run nobody holds, so the
// runs are dealt as the GPUs come free.
//
// Stopping: SIGINT or SIGTERM to the sweep is passed on to the running run, which saves a
// checkpoint at its next step boundary and exits, and no further run starts (a second signal
// is passed on too: the run then exits at once). With a time limit the sweep does the same
// when the limit is reached. Running the same sweep again continues where it stopped.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "scaling/sweep.h"

namespace coil::scaling {

struct SweepOptions {
  std::string program;      // the coil executable that runs each run; empty: this one
  double time_limit_s = 0;  // > 0: stop (the running run checkpointed) after this many seconds
  std::function<void(const std::string&)> print;  // progress lines (stderr by default)
};

struct SweepRunOutcome {
  std::string name, run_dir;
  std::string action;   // "skipped" (already finished) | "started" | "resumed" | "not started"
  std::string outcome;  // "finished" | "interrupted" | "failed" | "not started" | "elsewhere" (another sweep holds it)
  int exit_code = 0;    // the child's exit status (128 + signal if a signal ended it)
  std::string problem;  // why it failed
};

struct SweepResult {
  std::vector<SweepRunOutcome> runs;  // in the sweep's order
  int finished = 0, skipped = 0, interrupted = 0, failed = 0, not_started = 0;  // skipped ones count as finished too
  int elsewhere = 0;  // held by another sweep of the same file when this one came to them
  bool time_limit_reached = false;
  int signal = 0;  // the signal that stopped the sweep
  // 0: every run finished (or was held by another sweep); 1: a run failed; 3: the time limit
  // stopped it; 128 + signal.
  int exit_code() const;
};

SweepResult run_sweep(const Sweep& sweep, const SweepOptions& options);

// "8 runs: 6 finished (2 skipped), 1 interrupted, 1 failed" and a line per run that is not finished.
std::string format_sweep_summary(const SweepResult& result);

}  // namespace coil::scaling
