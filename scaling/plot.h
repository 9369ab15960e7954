// Plots: every PNG coil draws comes from a script in scripts/ (plot_runs.py, plot_scaling.py,
// plot_lengths.py), run by the first Python that has matplotlib. `coil report`, `coil eval
// --lengths` and `coil plot` all go through run_plot_script, so they find the same Python:
//
//   PlotResult r = run_plot_script("plot_lengths.py", {"runs/a/length_eval.csv", "-o", "a.png"});
//
// The Pythons tried, in order: PlotOptions::python when given (alone); else $COIL_PYTHON,
// python3 on the PATH, then /usr/bin/python3 (a venv or pyenv python3 often lacks the Debian
// python3-matplotlib). A script exits with status 3 when matplotlib is missing, and a shell
// reports 127 for a Python that does not exist: both mean "try the next one".
#pragma once
#include <string>
#include <vector>

namespace coil::scaling {

struct PlotOptions {
  std::string python;       // empty: $COIL_PYTHON, python3, /usr/bin/python3 (see above)
  std::string scripts_dir;  // empty: $COIL_SCRIPTS_DIR, else the scripts/ folder found next to
                            // the sources, the executable or the working directory
};

struct PlotResult {
  bool drawn = false;    // a script ran and exited with 0
  int exit_code = -1;    // of the last script run (-1: none ran)
  std::string command;   // the command that ran last
  std::string output;    // its stdout and stderr
  std::string problem;   // why nothing was drawn (empty when drawn)
};

// The path of scripts/<name>, or "" when it is not found.
std::string find_script(const std::string& name, const PlotOptions& options = {});

// Runs scripts/<script> with `args` under the first Python that has matplotlib.
PlotResult run_plot_script(const std::string& script, const std::vector<std::string>& args,
                           const PlotOptions& options = {});

// Runs a shell command, capturing stdout and stderr; returns the exit status as a shell
// reports it (-1 if it did not run).
int run_command(const std::string& command, std::string& output);

}  // namespace coil::scaling
