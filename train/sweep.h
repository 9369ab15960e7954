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
// give names explicitly with a `name:` list.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace coil::train {

struct SweepRun {
  std::string name;
  std::string run_dir;
  std::vector<std::pair<std::string, std::string>> overrides;  // key path -> value, as --set
};

struct Sweep {
  std::string base_config;  // path
  std::string out_dir;
  std::vector<SweepRun> runs;
};

// Reads and expands a sweep file; errors name the file, the line and the key.
Sweep load_sweep(const std::string& path);

}  // namespace coil::train
