// The training loop (docs/CONFIG.md describes the run directory):
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
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/shape.h"
#include "data/loader.h"
#include "layers/model.h"
#include "train/config.h"

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

struct EvalResult {
  double loss = 0, perplexity = 0, accuracy = -1;  // accuracy -1: the data has none
  double bits_per_byte = -1;    // byte-level token files: loss / ln 2 (-1: bytes per token unknown)
  int64_t batches = 0, windows = 0, targets = 0;
  int64_t step = 0;             // the checkpoint's step (0: initial weights)
  std::string checkpoint;       // the checkpoint evaluated ("" if none)
};
// Evaluates the run's latest good checkpoint (or `checkpoint` when given) on the held-out
// batches eval.batches (all: the whole held-out split). A run whose checkpoints are all
// damaged (or of another model) is an error; a run without any evaluates the initial weights.
EvalResult evaluate(const Config& config, const std::string& checkpoint = "",
                    const std::function<void(const std::string&)>& print = nullptr);

// ---- the pieces of an evaluation (the length sweep, scaling/length_eval.h, uses them too) ----

// The data a config describes (train.seq_len windows), as rank `rank` of `world` draws it.
data::DataOptions data_options(const Config& config, int rank = 0, int world = 1);

struct EvalTotals {
  double loss_sum = 0;
  int64_t targets = 0, correct = 0;
  bool has_accuracy = false;
  double loss() const { return targets ? loss_sum / double(targets) : NAN; }
  double accuracy() const { return has_accuracy && targets ? double(correct) / double(targets) : -1; }
};
// The held-out batches an evaluation reads, as (index, size) of DataLoader::val_batch: the
// first `batches` micro-batches, or (EvalSection::kAll) the whole held-out split: every whole
// micro-batch, then the windows past the last one, one at a time.
using EvalBatches = std::vector<std::pair<int64_t, int64_t>>;
EvalBatches eval_batches(const data::DataLoader& loader, int64_t batches, int64_t micro_batch);
// Loss (and accuracy on answer positions for synthetic tasks) over those batches, without
// gradients; rank r of `world` takes batches r, r + world, ... (the caller sums the totals
// over ranks).
EvalTotals run_eval(const layers::LanguageModel& model, const data::DataLoader& loader, const EvalBatches& batches,
                    Device device, int rank = 0, int world = 1);

// A run's model on its device (train.device resolved) in evaluation mode, with the weights of
// `checkpoint`, or of the run's newest good checkpoint when empty (the initial weights, with a
// warning, when there is none).
struct EvalModel {
  std::unique_ptr<layers::LanguageModel> model;
  Device device;
  Config config;            // device and dtype resolved
  int64_t step = 0;         // the checkpoint's step (0: initial weights)
  std::string checkpoint;   // the checkpoint loaded ("" if none)
};
EvalModel load_eval_model(const Config& config, const std::string& checkpoint = "",
                          const std::function<void(const std::string&)>& print = nullptr);

}  // namespace coil::train
