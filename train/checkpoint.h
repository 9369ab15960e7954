// Checkpoints: one HDF5 file per checkpoint, <run_dir>/checkpoints/step_<8 digits>.h5
// (docs/FORMATS.md has the layout):
//   /params/<name>           each parameter's master value (fp32; f64 for f64 models)
//   /optim/<name>            the optimizer's tensors (AdamW: exp_avg/<param>, exp_avg_sq/<param>)
//   /carry/<name>            train.carry_state: the states carried into the next window
//   root attributes          step, tokens_seen, nan_skips, sampler and RNG state, the schedule's
//                            last learning rate, the resolved config (YAML text), param aliases,
//                            world_size (absent in files from before it existed: 1),
//                            coil_version (the writer's version_string(), not checksummed;
//                            absent in older files), and `checksum` (see below)
//
// A checkpoint is written to "<name>.tmp", flushed and fsync'ed, then renamed (and the
// directory fsync'ed), so the newest step_*.h5 is always complete. `checksum` is a 64-bit
// FNV-1a over every dataset (name, dtype, shape, bytes, in name order) and the state
// attributes; load verifies it. A damaged newest checkpoint (truncated, corrupt) makes
// load_latest fall back to the previous good one, saying so; the trainer then sets it aside
// (set_aside), so that pruning never keeps it in place of a good one.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace coil::layers {
class LanguageModel;
struct ModelConfig;
}  // namespace coil::layers

namespace coil::train {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

struct TrainState {
  int64_t step = 0;         // optimizer steps done
  int64_t tokens_seen = 0;  // over all ranks
  int64_t nan_skips = 0;
  uint64_t sampler_seed = 0, sampler_examples = 0;  // data::SamplerState (a global cursor)
  int64_t world_size = 1;                           // the ranks that wrote it
  uint64_t rng_seed = 0, rng_offset = 0;            // the trainer's Generator
  double last_lr = 0;                               // the schedule's value at the last step
  double best_val_loss = 0;                         // 0: none yet
  std::string config_yaml;                          // the resolved config
  std::string coil_version;  // read: the version_string() of the coil that wrote the file ("" in older
                             // files); a write records its own version, whatever this holds
};

struct Checkpoint {
  TrainState state;
  NamedTensors params;     // CPU tensors
  NamedTensors optimizer;  // CPU tensors
  NamedTensors carried;    // CPU tensors (train.carry_state; empty otherwise)
  std::vector<std::pair<std::string, std::string>> aliases;  // alias name -> parameter name
};

// Writes atomically (temporary name, flush, fsync, rename). Tensors may live on any device.
void write_checkpoint(const std::string& path, const Checkpoint& checkpoint);
// Reads and verifies the checksum; a damaged file is an error naming it and what is wrong.
Checkpoint read_checkpoint(const std::string& path);
// Only the state attributes (no tensors); verifies nothing.
TrainState read_checkpoint_state(const std::string& path);

std::string checkpoint_dir(const std::string& run_dir);
std::string checkpoint_path(const std::string& run_dir, int64_t step);
// The run's checkpoints, oldest first (by step).
std::vector<std::string> list_checkpoints(const std::string& run_dir);

// A checkpoint that load_latest passed over, and why.
struct PassedOver {
  std::string path;
  std::string reason;   // the error
  bool damaged = true;  // false: it verifies, but `usable` refused it (another model)
};

// The newest checkpoint that reads, verifies and passes `usable` (when given: it throws a
// coil::Error saying what does not fit, e.g. another model's shapes). Each one passed over on
// the way is reported through `warn` ("checkpoint step_00000200.h5 is damaged (...); falling
// back to step_00000100.h5") and, when `passed_over` is given, listed there (newest first).
// Returns false when none is usable (a run that has none, or only damaged or unusable ones).
bool load_latest(const std::string& run_dir, Checkpoint& out, std::string* path = nullptr,
                 const std::function<void(const std::string&)>& warn = nullptr,
                 const std::function<void(const Checkpoint&)>& usable = nullptr,
                 std::vector<PassedOver>* passed_over = nullptr);

// Moves checkpoints that load_latest passed over out of the run's list, renamed
// <name>.corrupt (damaged) or <name>.other-model: kept as evidence, never loaded again nor
// counted by keep_last. Returns one line per file saying where it went.
std::vector<std::string> set_aside(const std::vector<PassedOver>& checkpoints);

// After writing `newest` (a checkpoint of the run): deletes the run's checkpoints older than
// the newest `keep_last` up to and including `newest`, which always stays. Checkpoints with a
// higher step than `newest` are neither counted nor deleted. When `newest` follows skipped
// steps (nan_skips > 0), the newest checkpoint from before the run's first skipped step stays
// as well (newest_before_skips). Stale temporary files go.
void prune_checkpoints(const std::string& run_dir, int64_t keep_last, const std::string& newest);

// The newest checkpoint of the run written before its first skipped step (nan_skips 0), ""
// when there is none (or its state cannot be read).
std::string newest_before_skips(const std::string& run_dir);

// 64-bit FNV-1a, fed in pieces.
struct Fnv1a {
  uint64_t h = 0xcbf29ce484222325ull;
  void update(const void* data, size_t n);
};

// Throws when the checkpoint's parameters are not those of the model `m` describes (names and
// shapes), saying which one differs: a checkpoint of another model.
void check_same_model(const Checkpoint& checkpoint, const layers::ModelConfig& m);
// Loads parameters (a checkpoint's, or initial weights) into the model, by name.
void load_parameters(layers::LanguageModel& model, const NamedTensors& params);

}  // namespace coil::train
