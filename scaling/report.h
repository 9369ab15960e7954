// Scaling-law reports (`coil report RUNS... --out DIR`, docs/SCALING.md): reads run
// directories (config.yaml + metrics.jsonl, as train/trainer.h writes them), tabulates each
// run, fits loss = a * FLOPs^(-b) (+ c) per architecture (scaling/power_law.h) and draws the
// plots with scripts/plot_scaling.py (through scaling/plot.h, as every plot).
//
//   ReportResult r = write_report(expand_run_args({"runs/small"}), "reports/small", false);
//
// writes into DIR:
//   report.md          the table (with perplexity, e^val_loss), the fits with 95% intervals,
//                      the crossover, a comparison at equal FLOPs, notes, the plots
//   runs.csv           one row per run (every run, whatever its status)
//   curves.csv         run, architecture, status, split (train|val), step, tokens, loss
//   fits.csv           architecture, points, a, b, c, rmse_log, flops_min, flops_max, and the
//                      fit's uncertainty (scaling/power_law.h): b_se, b_low, b_high (95%), dof,
//                      t95, mean_log_x, sxx, residual_var (empty where there is none)
//   crossovers.csv     each pair of fitted architectures: where their laws cross, the 95%
//                      interval, or where they differ significantly (scaling/power_law.h)
//   loss_vs_flops.png  final validation loss (perplexity on the right) against training
//                      FLOPs, log-log, fit lines with their 95% bands, the crossover
//   loss_curves.png    training and validation loss of every run against tokens
//
// Status of a run:
//   finished     its metrics reach train.steps (and hold the final evaluation when the run
//                evaluated at all)
//   interrupted  stopped early (a signal, a crash, a kill, a torn last line), or never
//                logged a step; its last numbers are shown but it takes no part in the fits
//   corrupt      unreadable: no or invalid config.yaml, a malformed metrics line before the
//                last, metrics beyond train.steps, a path that is not a directory
//   missing      a run a sweep file names whose directory does not exist (not started)
// No run is ever dropped from the table.
//
// Parameters and training FLOPs are the model's own counts (layers/model.h:
// LanguageModel::num_parameters / flops_per_token, computed from the config alone by
// train/trainer.h:model_info, so any size is instant): FLOPs = flops_per_token(seq_len) *
// tokens seen, where flops_per_token = 6 * matmul weights + 12 * n_attention * d_model * ctx
// + 3 * n_mamba * (9 * d_inner * d_state + 2 * d_inner).
#pragma once
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "layers/model_config.h"
#include "scaling/plot.h"
#include "scaling/power_law.h"

namespace coil::scaling {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct CurvePoint {
  int64_t step = 0;
  int64_t tokens = 0;
  double loss = 0;
};

struct RunRecord {
  std::string name;      // the directory's name
  std::string run_dir;
  std::string status;    // "finished" | "interrupted" | "corrupt" | "missing"
  std::string problem;   // why it is not finished (or a note on a finished run); empty if none
  std::string architecture;  // "mamba", "transformer++", "gpt2", "transformer", "hybrid", "mamba+mlp"
  std::string preset;        // model.preset as configured (overrides may change the size)
  int64_t d_model = 0, n_layer = 0, vocab_size = 0, seq_len = 0;
  int64_t parameters = 0, non_embedding_parameters = 0;
  int64_t steps = 0, planned_steps = 0;
  int64_t tokens = 0;           // tokens seen (the last logged step)
  int64_t tokens_per_step = 0;
  double flops_per_token = 0;   // training: forward + backward
  double flops = 0;             // flops_per_token * tokens
  double val_loss = kNaN;  // the last evaluation (NaN when none)
  int64_t val_step = -1;
  double train_loss = kNaN;  // the last logged training loss
  double wall_s = kNaN;      // training-loop time, summed over resumed segments
  double tokens_per_s = kNaN;
  int segments = 0;               // 1 + the number of resumptions seen in the metrics
  int64_t checkpoint_step = -1;   // interrupted runs: the latest checkpoint's step (-1: none)
  std::vector<CurvePoint> train_curve, val_curve;
};

struct ArchitectureFit {
  std::string architecture;
  int points = 0;  // finished runs with a validation loss
  bool ok = false;
  std::string problem;  // why there is no fit
  PowerLawFit fit;
  double flops_min = 0, flops_max = 0;
};

// Where two architectures' plain power laws cross (scaling/power_law.h), as the report states it.
struct ArchitectureCrossover {
  std::string first, second;
  bool ok = false;       // both fits have an uncertainty (3 runs or more, no constant)
  Crossover crossover;
  std::string sentence;  // the report's statement: where, with its interval, or why none
};

struct ReportOptions {
  bool with_constant = false;  // fit loss = a * FLOPs^(-b) + c
  bool plots = true;
  PlotOptions plot;  // which Python and scripts/ draw the plots (scaling/plot.h)
};

struct ReportResult {
  std::vector<RunRecord> runs;  // in the order given
  std::vector<ArchitectureFit> fits;
  std::vector<ArchitectureCrossover> crossovers;  // each pair of fitted architectures
  std::string markdown, csv, curves_csv, fits_csv, crossovers_csv;  // paths written
  std::vector<std::string> plots;                   // PNG paths written
  std::vector<std::string> warnings;                // e.g. plots skipped (also in report.md)
  int finished = 0, interrupted = 0, corrupt = 0, missing = 0;
};

// Reads one run directory; never throws for a bad run (it becomes "corrupt").
RunRecord read_run(const std::string& run_dir);

// Command-line arguments to run directories: a run directory is itself; a directory without
// config.yaml whose subdirectories are runs (a sweep's out_dir) gives those subdirectories; a
// sweep file (*.yaml, scaling/sweep.h) gives every run it names, started or not; anything
// else is passed through (and reported as missing or corrupt). Duplicates are removed.
std::vector<std::string> expand_run_args(const std::vector<std::string>& args);

// The model family of a config's structure (not its preset name, which overrides may outgrow).
std::string architecture_name(const layers::ModelConfig& model);

ReportResult write_report(const std::vector<std::string>& run_dirs, const std::string& out_dir,
                          const ReportOptions& options);
ReportResult write_report(const std::vector<std::string>& run_dirs, const std::string& out_dir,
                          bool with_constant = false);

// A one-paragraph summary for the console ("12 runs: 10 finished, 1 interrupted, ...").
std::string format_report_summary(const ReportResult& result);

// CSV fields: text quoted when it holds a comma, a quote or a line break; numbers with 10
// significant digits, empty when not finite.
std::string csv_text(const std::string& s);
std::string csv_num(double v);

}  // namespace coil::scaling
