// The training loop (docs/CONFIG.md describes the run directory; train/trainer.cpp's Trainer
// runs it in phases: docs/ARCHITECTURE.md, "The training run"):
//
//   for each step: draw accumulation x micro-batches; forward + backward each, the gradient
//   weighted by its share of the step's targets; (data parallel: average over ranks); clip by
//   the global norm; AdamW at the schedule's learning rate; log; evaluate every eval.every
//   steps on fixed held-out batches; checkpoint every checkpoint.every steps and at the end.
//   With train.carry_state each micro-batch starts from its sequence slots' carried Mamba
//   states and leaves its final ones for their next windows (train/carried_state.h).
//
// Data parallel (launched by `coil launch`, torchrun, srun or mpirun: docs/DISTRIBUTED.md):
// each rank runs this loop on the GPU of its local rank and draws its own micro-batches of the
// one seeded stream; gradient buckets are averaged over NCCL during the last micro-step's
// backward; rank 0 prints, logs and writes checkpoints. The host syncs once per step
// (docs/ARCHITECTURE.md, "Host synchronization").
//
// A run directory holds config.yaml (the resolved config), metrics.jsonl (one JSON object per
// logged step or evaluation), checkpoints/step_*.h5 and, with log.tensorboard, an event file.
// A non-finite loss skips its step with a warning (up to train.max_nan_skips). SIGINT/SIGTERM
// save a checkpoint at the next step boundary and stop; a second signal exits at once.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "train/config.h"
#include "train/evaluation.h"

namespace coil::train {

struct TrainOptions {
  bool resume = false;        // continue from the run directory's latest checkpoint (required)
  bool allow_resume = true;   // `coil train` on a directory holding the same run continues it
  bool install_signal_handlers = true;
  // Stop (with a checkpoint) after this many steps of this call: tests. With several ranks the
  // request is agreed on like a signal, after a step all ranks finish (at least one step runs).
  int64_t stop_after_steps = -1;
  // > 0: stop the same way once this many seconds of this call have passed (to split a run
  // over time-limited jobs: the same command continues it).
  double time_limit_s = 0;
  bool quiet = false;             // no console output (tests)
  // Called after every optimizer step (or skipped step) with the step number and its loss
  // (this rank's, as TrainResult::losses).
  std::function<void(int64_t step, double loss)> on_step;
  // Called for each message line (console by default).
  std::function<void(const std::string&)> print;
};

struct TrainResult {
  std::string run_dir;
  int64_t start_step = 0;    // where this call began (resumed runs: the checkpoint's step)
  int64_t final_step = 0;
  // The loss of every step this call ran (NaN for skipped ones). Several ranks: this rank's
  // own micro-batches; metrics.jsonl logs the mean over the ranks.
  std::vector<double> losses;
  double val_loss = 0, val_accuracy = -1;  // the last evaluation (accuracy: -1 when none)
  bool interrupted = false;  // by a signal, stop_after_steps or time_limit_s
  int signal = 0;            // the signal that interrupted the run, if any
  bool time_limit_reached = false;
  int64_t nan_skips = 0;
};

// Runs (or resumes) the training the config describes. Raises coil::Error for bad input,
// a run directory holding a different run, or too many non-finite losses.
TrainResult run_training(Config config, const TrainOptions& options = {});

}  // namespace coil::train
