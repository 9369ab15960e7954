// Batches for training and evaluation, from HDF5 token files or from synthetic tasks
// generated on the fly.
//
// Every training example is a pure function of (seed, example number): the sampler's whole
// state is the number of examples drawn so far, so a checkpoint stores two integers and a
// resumed run sees exactly the batches the uninterrupted run would have seen. With several
// ranks, rank r takes example numbers r, r + world, r + 2 world, ...: its i-th draw is example
// i * world + r. Every rank draws the same number per step, so together they consume the
// stream in order, and the state is one global cursor (examples drawn by all ranks), the same
// on every rank. A step of micro_batch x accumulation x world examples therefore covers the
// same examples whatever the world size; only their split into micro-batches differs.
//
// Token files: a training example is a window of seq_len + 1 tokens of the training part of
// the files (each file's last val_fraction is held out, or data.val_path names separate files);
// inputs are the first seq_len tokens, targets the last seq_len. Where the window starts:
//   sampling "random"    a uniformly drawn position, with replacement (windows overlap and a
//                        token may be drawn again before the data is used up)
//   sampling "shuffled"  the training part is cut into consecutive windows at multiples of
//                        seq_len (window k holds tokens k*L .. k*L+L, so every token is a
//                        target of exactly one window), and each pass over them visits every
//                        window once, in an order drawn from (seed, pass): no token is seen
//                        twice before all have been seen once (train_windows() examples a pass)
// Validation batches are fixed, non-overlapping windows of the held-out part.
//
// Synthetic tasks (the Mamba paper, section 4.1), token ids:
//   selective_copying: noise 0, data tokens 1..task_vocab, separator task_vocab+1. The first
//     seq_len - copy_tokens positions hold copy_tokens data tokens at random positions among
//     noise; then the separator; then the data tokens in order. Targets are the data tokens
//     at the answer positions and -100 (ignored) everywhere else.
//   induction_heads: data tokens 0..task_vocab-1, trigger task_vocab. Random data tokens; the
//     trigger at a random position followed by a key; the trigger again at the last input
//     position, whose target is the key (the only target that is not -100).
//   random: uniform ids in [0, vocab_size), every next token a target (benchmarks).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/token_file.h"

namespace coil::data {

constexpr int64_t kIgnoreIndex = -100;

struct Batch {
  Tensor inputs;   // i64 [B, L] on the CPU
  Tensor targets;  // i64 [B, L]; kIgnoreIndex where no loss is taken
  int64_t target_count() const;  // targets that are not ignored
};

struct DataOptions {
  std::string kind = "synthetic";  // synthetic | tokens
  std::string task = "selective_copying";
  std::string path, val_path;
  double val_fraction = 0.01;
  std::string sampling = "random";  // tokens: random | shuffled (above)
  int64_t task_vocab = 16;
  int64_t copy_tokens = 16;
  bool check_ids = true;
  int64_t vocab_size = 256;  // the model's (unpadded) vocabulary
  int64_t seq_len = 256;
  uint64_t seed = 0;
  int rank = 0, world_size = 1;
};

// What a checkpoint stores about the data.
struct SamplerState {
  uint64_t seed = 0;
  uint64_t examples_drawn = 0;  // by all ranks together: the next step starts at this example
};

// One synthetic example: inputs and targets of seq_len each, from (seed, example number).
void synthetic_example(const DataOptions& options, uint64_t seed, uint64_t example, int64_t* inputs, int64_t* targets);

class DataLoader {
 public:
  explicit DataLoader(const DataOptions& options);

  Batch next_train(int64_t batch_size);
  // The i-th fixed validation batch (the same at every call). num_val_batches(B) of them
  // exist for token files (0 when nothing is held out); synthetic tasks have any number.
  Batch val_batch(int64_t index, int64_t batch_size) const;
  int64_t num_val_batches(int64_t batch_size) const;

  SamplerState state() const { return {options_.seed, drawn_ * uint64_t(options_.world_size)}; }
  // The seed must match. A cursor that the world size does not divide (the state was saved by
  // another number of ranks) is rounded up: the few examples in between are skipped.
  void set_state(const SamplerState& state);

  // Synthetic copying and induction tasks report accuracy on their answer positions.
  bool has_accuracy() const;
  const DataOptions& options() const { return options_; }
  const TokenDataset* dataset() const { return dataset_.get(); }
  int64_t train_windows() const { return total_starts_; }
  std::string describe() const;

 private:
  void window(uint64_t example, int64_t* inputs, int64_t* targets);
  void read_window(const TokenDataset& ds, size_t file, int64_t start, int64_t* inputs, int64_t* targets) const;

  DataOptions options_;
  uint64_t drawn_ = 0;  // by this rank
  std::unique_ptr<TokenDataset> dataset_, val_dataset_;
  // Training: per file, the first token past the training part and the count of window starts
  // (every position for random sampling, every stride_ = seq_len-th for shuffled).
  std::vector<int64_t> train_end_, starts_cum_;  // starts_cum_[f] = window starts in files < f
  int64_t total_starts_ = 0, stride_ = 1;
  // Validation windows: (file, start) in val_dataset_ (or dataset_'s held-out tails).
  std::vector<std::pair<size_t, int64_t>> val_windows_;
  std::vector<int64_t> buffer_;
};

}  // namespace coil::data
