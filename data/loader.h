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
//   sampler "random"     a uniformly drawn position, with replacement (windows overlap and a
//                        token may be drawn again before the data is used up)
//   sampler "shuffled"   the training part is cut into consecutive windows at multiples of
//                        seq_len (window k holds tokens k*L .. k*L+L, so every token is a
//                        target of exactly one window), and each pass over them visits every
//                        window once, in an order drawn from (seed, pass): no token is seen
//                        twice before all have been seen once (train_windows() examples a pass)
// Validation batches are fixed, non-overlapping windows of the held-out part.
//
// The sequential sampler (data.sampler: sequential) reads the stream in order instead, for
// carried state (truncated backpropagation through time): the training part of the files,
// cut into non-overlapping windows (starts 0, seq_len, 2 seq_len, ... of each file), is split
// into `slots` equal runs of consecutive windows, one per sequence slot (the examples of a
// step over all ranks: micro_batch x accumulation x ranks). Example e belongs to slot
// e mod slots and is that slot's window number (e / slots) mod run length: each step reads
// the next window of every slot, and a slot starts its run again when it is through. A row
// `continues` when its window follows the slot's previous window in the same file.
//
// Documents (data.reset_at_eot): each batch carries seq_idx, a document index per input
// position (kernels/documents.h), from the file's /doc_offsets when it has them, else from its
// eot_token (a document starts after each end-of-text token). A row whose first position
// starts a document does not continue its slot's state either.
//
// Synthetic tasks (the Mamba paper, section 4.1 and appendix E.1; docs/SYNTHETIC.md), token ids:
//   selective_copying: noise 0, data tokens 1..task_vocab, marker task_vocab+1 (the paper's
//     vocabulary of 16 is task_vocab 14: noise, 14 data tokens, marker). The first
//     seq_len - copy_tokens positions hold copy_tokens data tokens at distinct random positions
//     among noise; the last copy_tokens positions are markers, and the target at the i-th
//     marker is the i-th data token (in order); every other target is -100 (ignored). This is
//     the copying generator of the paper's code base (state-spaces/s4, "variable" copying):
//     the model never sees its answers as inputs.
//   induction_heads: data tokens 0..task_vocab-1, trigger task_vocab. Random data tokens; the
//     trigger at a random position in [0, seq_len-4] followed by a random key; the trigger
//     again at the last position, whose target is the key (the only target that is not -100).
//     As the H3 generator (HazyResearch/safari) with one trigger; the trigger appears nowhere
//     else.
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
  Tensor seq_idx;  // i32 [B, L] with reset_at_eot (documents), else undefined
  // Per row: the sequential sampler's window follows the slot's previous one and starts no
  // document, so a state carried from that window applies (all false otherwise).
  std::vector<bool> continues;
  int64_t target_count() const;  // targets that are not ignored
};

struct DataOptions {
  std::string kind = "synthetic";  // synthetic | tokens
  std::string task = "selective_copying";
  std::string path, val_path;
  double val_fraction = 0.01;
  int64_t task_vocab = 16;
  int64_t copy_tokens = 16;
  bool check_ids = true;
  int64_t vocab_size = 256;  // the model's (unpadded) vocabulary
  int64_t seq_len = 256;
  uint64_t seed = 0;
  int rank = 0, world_size = 1;
  std::string sampler = "random";  // token files: random | shuffled | sequential (above)
  int64_t slots = 1;               // sequential: sequence slots (examples a step over all ranks)
  bool reset_at_eot = false;       // token files: seq_idx from the documents
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
  // Fills row `row` of b with training example `example`.
  void window(uint64_t example, Batch& b, int64_t row);
  // Reads the window at `start` of file `file` into row `row` of b (seq_idx too, with
  // reset_at_eot); returns whether its first input starts a document.
  bool read_window(const TokenDataset& ds, size_t file, int64_t start, Batch& b, int64_t row) const;
  Batch empty_batch(int64_t batch_size) const;
  // reset_at_eot: every file must mark its documents (an eot_token or /doc_offsets).
  static void check_documents_marked(const TokenDataset& ds);

  DataOptions options_;
  uint64_t drawn_ = 0;  // by this rank
  std::unique_ptr<TokenDataset> dataset_, val_dataset_;
  // Training: per file, the first token past the training part and the count of window starts
  // (every position for random sampling, every stride_ = seq_len-th for shuffled).
  std::vector<int64_t> train_end_, starts_cum_;  // starts_cum_[f] = window starts in files < f
  int64_t total_starts_ = 0, stride_ = 1;
  // Sequential sampler: windows_cum_[f] = non-overlapping windows in files < f; each slot
  // reads run_ of them.
  std::vector<int64_t> windows_cum_;
  int64_t run_ = 0;
  // Validation windows: (file, start) in val_dataset_ (or dataset_'s held-out tails).
  std::vector<std::pair<size_t, int64_t>> val_windows_;
  std::vector<int64_t> buffer_;
};

}  // namespace coil::data
