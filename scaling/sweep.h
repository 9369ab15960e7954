// Sweeps: one YAML file that expands into ordinary runs.
//
//   base: configs/tiny/mamba.yaml        # the config every run starts from (relative to
//                                        # the sweep file)
//   out_dir: runs/small                  # each run gets out_dir/<run name>
//   set: {train.steps: 100}              # overrides shared by all runs (optional)
//   axes:                                # the runs are the product of the axes;
//     - model.preset: [mamba-1m, mamba-4m]     # the keys of one axis vary together (zipped)
//       optim.lr: [3e-3, 2e-3]
//     - train.seed: [1, 2]
//
// gives 4 runs. A run's name joins its varying values ("mamba-1m_3e-3_1"), or an axis may
// give names explicitly with a `name:` list. A key appears once (in `set:` or in one axis).
//
// Each run is the ordinary training run `coil train BASE --set run.name=NAME --set KEY=VALUE
// ... --set run.dir=OUT_DIR/NAME` (sweep_train_args); scaling/sweep_runner.h runs them.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "train/config.h"

namespace coil::scaling {

struct SweepRun {
  std::string name;
  std::string run_dir;
  std::vector<std::pair<std::string, std::string>> overrides;  // key path -> value, as --set
};

struct Sweep {
  std::string path;         // the sweep file
  std::string base_config;  // path
  std::string out_dir;
  std::vector<SweepRun> runs;
  std::map<std::string, int> key_lines;  // key path -> its line in the sweep file (errors)
};

// Reads and expands a sweep file; errors name the file, the line and the key.
Sweep load_sweep(const std::string& path);

// A run's overrides as `--set` assignments: run.name, the sweep's overrides, run.dir.
std::vector<std::string> sweep_run_overrides(const SweepRun& run);

// The run's `coil` arguments: {"train", BASE, "--set", "run.name=NAME", ..., "--set", "run.dir=DIR"}.
std::vector<std::string> sweep_train_args(const Sweep& sweep, const SweepRun& run);

// The runs as shell commands, one a line, for a cluster scheduler (`coil sweep --print`).
std::string format_sweep_commands(const Sweep& sweep, const std::string& program);

// A word quoted for a POSIX shell where it needs quotes.
std::string shell_quote(const std::string& word);

// The run's config (the base with its overrides). A key no config has, or a bad value, is an
// error naming the sweep file, the key's line and the run.
train::Config sweep_run_config(const Sweep& sweep, const SweepRun& run);

// Every run's config, checked before anything runs (the first bad run's error).
std::vector<train::Config> check_sweep(const Sweep& sweep);

}  // namespace coil::scaling
