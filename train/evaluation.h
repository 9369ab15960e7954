// Evaluation: the held-out loss (and accuracy, perplexity, bits per byte) of a model, during a
// run (the trainer's evaluate phase), of a run's checkpoint (`coil eval`) or over sequence
// lengths (scaling/length_eval.h).
#pragma once
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/loader.h"
#include "layers/model.h"
#include "train/config.h"

namespace coil::train {

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

// ---- the pieces of an evaluation (the trainer and the length sweep use them too) ----

// The documents of a batch on the device (none without data.reset_at_eot).
layers::SequenceContext documents_of(const data::Batch& batch, Device device);
// Token files of the built-in byte-level tokenizer: one token is one byte (end-of-text ids
// count as one), so bits per byte is the loss in bits.
bool byte_level(const data::DataLoader& loader);

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
