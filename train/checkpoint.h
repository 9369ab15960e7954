// Checkpoints: one HDF5 file per checkpoint, <run_dir>/checkpoints/step_<8 digits>.h5
// (docs/FORMATS.md has the layout):
//   /params/<name>           each parameter's master value (fp32; f64 for f64 models)
//   /optim/<name>            the optimizer's tensors (AdamW: exp_avg/<param>, exp_avg_sq/<param>)
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
// load_latest fall back to the previous good one, saying so.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

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

// The newest checkpoint that reads and verifies. Each damaged one met on the way is reported
// through `warn` ("checkpoint step_00000200.h5 is damaged (...); falling back to ..."). Returns
// false when none is usable (a run that has none, or only damaged ones).
bool load_latest(const std::string& run_dir, Checkpoint& out, std::string* path = nullptr,
                 const std::function<void(const std::string&)>& warn = nullptr);

// Deletes all but the newest `keep_last` checkpoints (and stale temporary files).
void prune_checkpoints(const std::string& run_dir, int64_t keep_last);

// safetensors: u64 little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets}, "__metadata__": {...}}, then the raw little-endian data. dtype "F32" or "BF16".
void write_safetensors(const std::string& path, const NamedTensors& tensors, const std::string& dtype = "F32",
                       const std::vector<std::pair<std::string, std::string>>& metadata = {});
// Reads one back (F32, BF16, F64, I64), as CPU tensors in file order; for tests and tools.
NamedTensors read_safetensors(const std::string& path);

// 64-bit FNV-1a, fed in pieces.
struct Fnv1a {
  uint64_t h = 0xcbf29ce484222325ull;
  void update(const void* data, size_t n);
};

}  // namespace coil::train
