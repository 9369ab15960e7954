#include "scaling/report.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "scaling/plot.h"
#include "scaling/sweep.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/info.h"

namespace coil::scaling {
namespace fs = std::filesystem;

namespace {

bool has_run_files(const fs::path& dir) {
  std::error_code ec;
  return fs::exists(dir / "config.yaml", ec) || fs::exists(dir / "metrics.jsonl", ec) ||
         fs::exists(dir / "checkpoints", ec);
}

std::string dir_name(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  std::string n = p.filename().string();
  return n.empty() ? path : n;
}

// One metrics.jsonl line: a flat JSON object (JSON is YAML's flow syntax, so yaml-cpp reads it).
struct MetricsLine {
  bool ok = false;
  YAML::Node node;
};

MetricsLine parse_line(const std::string& line) {
  MetricsLine m;
  try {
    m.node = YAML::Load(line);
    m.ok = m.node.IsMap() && m.node["step"] && m.node["step"].IsScalar();
    if (m.ok) (void)m.node["step"].as<int64_t>();
  } catch (const std::exception&) {
    m.ok = false;
  }
  return m;
}

bool get_num(const YAML::Node& n, const char* key, double& out) {
  YAML::Node v = n[key];
  if (!v || !v.IsScalar()) return false;  // absent or null
  try {
    out = v.as<double>();
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

bool get_bool(const YAML::Node& n, const char* key) {
  YAML::Node v = n[key];
  if (!v || !v.IsScalar()) return false;
  try {
    return v.as<bool>();
  } catch (const std::exception&) {
    return false;
  }
}

// Reads metrics.jsonl into the record; returns false (with r.problem) when it is corrupt.
bool read_metrics(const fs::path& path, RunRecord& r, bool& torn_tail) {
  torn_tail = false;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    r.problem = fmt::format("cannot read {}", path.string());
    return false;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> lines;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  const bool ends_with_newline = !text.empty() && text.back() == '\n';

  // Wall time and throughput over segments: elapsed_s restarts at each resumption.
  double wall = 0, seg_elapsed = -1;
  int64_t tokens_counted = 0, seg_start_tokens = 0, last_train_tokens = 0;
  bool any_elapsed = false;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    MetricsLine m = parse_line(line);
    if (!m.ok) {
      bool last = i + 1 == lines.size();
      if (last && !ends_with_newline) {  // a write cut short by a kill: the run stopped there
        torn_tail = true;
        continue;
      }
      r.problem = fmt::format("metrics.jsonl line {} is not a metrics record: '{}'", i + 1,
                              line.size() > 80 ? line.substr(0, 80) + "..." : line);
      return false;
    }
    const YAML::Node& n = m.node;
    int64_t step = n["step"].as<int64_t>();
    double v = 0;
    if (get_num(n, "val_loss", v)) {
      double tok = 0;
      get_num(n, "tokens", tok);
      r.val_curve.push_back({step, int64_t(tok), v});
      r.val_loss = v;
      r.val_step = step;
      r.tokens = std::max(r.tokens, int64_t(tok));
      continue;
    }
    if (get_bool(n, "skipped")) {
      r.steps = std::max(r.steps, step);
      continue;
    }
    double tok = 0;
    if (!get_num(n, "tokens", tok)) continue;  // not a training record
    r.steps = std::max(r.steps, step);
    r.tokens = std::max(r.tokens, int64_t(tok));
    if (get_num(n, "loss", v) && std::isfinite(v)) {
      r.train_curve.push_back({step, int64_t(tok), v});
      r.train_loss = v;
    }
    double elapsed = 0;
    if (get_num(n, "elapsed_s", elapsed)) {
      any_elapsed = true;
      if (seg_elapsed >= 0 && elapsed < seg_elapsed) {  // a new segment (resumed)
        wall += seg_elapsed;
        tokens_counted += last_train_tokens - seg_start_tokens;
        seg_start_tokens = last_train_tokens;
        r.segments += 1;
      }
      if (r.segments == 0) r.segments = 1;
      seg_elapsed = elapsed;
    }
    last_train_tokens = int64_t(tok);
  }
  if (any_elapsed) {
    wall += std::max(seg_elapsed, 0.0);
    tokens_counted += last_train_tokens - seg_start_tokens;
    r.wall_s = wall;
    if (wall > 0) r.tokens_per_s = double(tokens_counted) / wall;
  }
  return true;
}

template <typename T>
std::string csv_field(const T& v) {
  return fmt::format("{}", v);
}

}  // namespace

std::string csv_text(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csv_num(double v) { return std::isfinite(v) ? fmt::format("{:.10g}", v) : ""; }

namespace {

std::string md_text(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

std::string human_count(double v) {
  if (!std::isfinite(v)) return "-";
  if (v >= 1e9) return fmt::format("{:.2f}B", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

std::string sci(double v) { return std::isfinite(v) && v > 0 ? fmt::format("{:.3g}", v) : "-"; }

std::string loss_text(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : "-"; }

std::string duration_text(double s) {
  if (!std::isfinite(s)) return "-";
  int64_t t = int64_t(std::llround(s));
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{:.1f}s", s);
}

}  // namespace

namespace {

// An interrupted run's latest checkpoint (read for its state only): where a resume continues.
void note_checkpoint(RunRecord& r) {
  try {
    auto list = train::list_checkpoints(r.run_dir);
    if (list.empty()) {
      r.problem += "; no checkpoint to resume from";
      return;
    }
    train::TrainState st = train::read_checkpoint_state(list.back());
    r.checkpoint_step = st.step;
    r.problem += fmt::format("; latest checkpoint at step {} ({} tokens): `coil resume {}` continues it", st.step,
                             st.tokens_seen, r.run_dir);
  } catch (const std::exception& e) {
    r.problem += fmt::format("; its latest checkpoint cannot be read: {}", e.what());
  }
}

// Where two architectures' fitted laws cross, as one sentence of the report.
ArchitectureCrossover cross_architectures(const ArchitectureFit& f, const ArchitectureFit& g) {
  ArchitectureCrossover out;
  out.first = f.architecture;
  out.second = g.architecture;
  const double lo = std::min(f.flops_min, g.flops_min), hi = std::max(f.flops_max, g.flops_max);
  const std::string range = fmt::format("the fitted range {} .. {}", sci(lo), sci(hi));
  auto lower_at = [&](double x) { return f.fit.predict(x) < g.fit.predict(x) ? f.architecture : g.architecture; };
  auto exponent = [](const PowerLawFit& p) {
    return fmt::format("{:.4f} (95%: {:.4f} .. {:.4f})", p.b, p.b - p.b_margin(), p.b + p.b_margin());
  };
  if (f.fit.c != 0 || g.fit.c != 0) {
    out.sentence = "not computed for fits with an irreducible loss (a crossover with its uncertainty is computed for "
                   "the plain power law: run the report without --with-constant)";
    return out;
  }
  if (!std::isfinite(f.fit.residual_var) || !std::isfinite(g.fit.residual_var)) {
    out.sentence = fmt::format("needs 3 fitted runs of each architecture for an uncertainty ({} has {}, {} has {})",
                               f.architecture, f.points, g.architecture, g.points);
    return out;
  }
  out.ok = true;
  const Crossover& c = out.crossover = power_law_crossover(f.fit, g.fit);
  if (!(c.x > 0 && std::isfinite(c.x))) {
    out.sentence = fmt::format("the fitted laws do not cross (equal exponents); {} is lower at every compute",
                               lower_at(std::sqrt(lo * hi)));
    return out;
  }
  const std::string where = fmt::format("the fits cross at {} FLOPs", sci(c.x));
  if (c.bounded) {
    const std::string interval = fmt::format("95% interval {} .. {}", sci(c.low), sci(c.high));
    const std::string sides = fmt::format("{} is lower below it, {} above", lower_at(c.x / 10), lower_at(c.x * 10));
    if (c.x >= lo && c.x <= hi)
      out.sentence = fmt::format("crossover in range: {} ({}); {}", where, interval, sides);
    else if (c.high < lo || c.low > hi)
      out.sentence = fmt::format("none in range: {} ({}), outside {}, where {} is lower throughout", where, interval,
                                 range, lower_at(std::sqrt(lo * hi)));
    else
      out.sentence = fmt::format("{} ({}), outside {} but its interval reaches into it; {}", where, interval, range,
                                 sides);
    return out;
  }
  out.sentence = fmt::format("no crossover can be placed: the exponents {} and {} do not differ significantly, so "
                             "the 95% confidence set of the crossing point ({}) is unbounded",
                             exponent(f.fit), exponent(g.fit), where);
  const double dl = std::max(c.differ_low, lo), dh = std::min(c.differ_high, hi);
  if (!std::isfinite(c.differ_low))
    out.sentence += "; the fits differ significantly nowhere";
  else if (dl < dh)
    out.sentence += fmt::format("; within {} they differ significantly from {} to {} FLOPs, where {} is lower", range,
                                sci(dl), sci(dh), lower_at(std::sqrt(dl * dh)));
  else
    out.sentence += fmt::format("; they differ significantly nowhere in {}", range);
  return out;
}

}  // namespace

std::string architecture_name(const layers::ModelConfig& m) {
  bool mamba = m.has_mamba(), attn = m.has_attention();
  if (mamba && attn) return "hybrid";
  if (mamba) return m.mlp == layers::MlpKind::none ? "mamba" : "mamba+mlp";
  using layers::MlpKind, layers::NormKind, layers::Positions;
  if (m.mlp == MlpKind::swiglu && m.attention.positions == Positions::rope && m.norm == NormKind::rmsnorm)
    return "transformer++";
  if (m.mlp == MlpKind::gelu && m.attention.positions == Positions::learned && m.norm == NormKind::layernorm)
    return "gpt2";
  return "transformer";
}

RunRecord read_run(const std::string& run_dir) {
  RunRecord r;
  r.run_dir = run_dir;
  r.name = dir_name(run_dir);
  std::error_code ec;
  fs::path dir(run_dir);
  if (!fs::exists(dir, ec)) {
    r.status = "missing";
    r.problem = "no such directory (not started?)";
    return r;
  }
  if (!fs::is_directory(dir, ec)) {
    r.status = "corrupt";
    r.problem = "not a directory";
    return r;
  }
  if (!fs::exists(dir / "config.yaml", ec)) {
    r.status = "corrupt";
    r.problem = "no config.yaml: not a run directory, or one whose run never started";
    return r;
  }
  train::Config config;
  try {
    config = train::load_run_config(run_dir);
  } catch (const std::exception& e) {
    r.status = "corrupt";
    r.problem = fmt::format("config.yaml cannot be read: {}", e.what());
    return r;
  }
  const auto& m = config.model.config;
  r.architecture = architecture_name(m);
  r.preset = config.model.preset;
  r.d_model = m.d_model;
  r.n_layer = m.n_layer;
  r.vocab_size = m.vocab_size;
  r.seq_len = config.train.seq_len;
  r.planned_steps = config.train.steps;
  try {
    train::ModelInfo info = train::model_info(config, 1);
    r.parameters = info.parameters;
    r.non_embedding_parameters = info.non_embedding_parameters;
    r.flops_per_token = info.flops_per_token;
    r.tokens_per_step = info.tokens_per_step;
  } catch (const std::exception& e) {
    r.status = "corrupt";
    r.problem = fmt::format("the model of config.yaml cannot be sized: {}", e.what());
    return r;
  }

  fs::path metrics = dir / "metrics.jsonl";
  if (!fs::exists(metrics, ec)) {
    r.status = "interrupted";
    r.problem = "no metrics.jsonl: stopped before its first step";
    note_checkpoint(r);
    return r;
  }
  bool torn = false;
  if (!read_metrics(metrics, r, torn)) {
    r.status = "corrupt";
    return r;
  }
  r.flops = r.flops_per_token * double(r.tokens);
  if (r.steps > r.planned_steps) {
    r.status = "corrupt";
    r.problem = fmt::format("metrics.jsonl reaches step {} but train.steps is {}", r.steps, r.planned_steps);
    return r;
  }
  const bool reached_end = r.steps == r.planned_steps && r.planned_steps > 0;
  const bool final_eval = r.val_step == r.planned_steps;
  const bool evaluates = config.eval.batches > 0;
  if (reached_end && (final_eval || !evaluates || r.val_curve.empty())) {
    r.status = "finished";
    if (!std::isfinite(r.val_loss)) r.problem = "no validation loss: not part of the fits";
    if (torn) r.problem += std::string(r.problem.empty() ? "" : "; ") + "a torn last metrics line was ignored";
    return r;
  }
  r.status = "interrupted";
  if (reached_end)
    r.problem = "reached the last step but has no final evaluation (stopped while evaluating?)";
  else if (r.steps == 0)
    r.problem = "no step logged";
  else
    r.problem = fmt::format("stopped at step {} of {}", r.steps, r.planned_steps);
  if (torn) r.problem += "; the last metrics line is torn";
  note_checkpoint(r);
  return r;
}

std::vector<std::string> expand_run_args(const std::vector<std::string>& args) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  auto add = [&](const std::string& p) {
    std::string key = fs::path(p).lexically_normal().string();
    if (!key.empty() && key.back() == '/') key.pop_back();
    if (seen.insert(key).second) out.push_back(p);
  };
  for (const auto& a : args) {
    std::error_code ec;
    fs::path p(a);
    bool is_file = fs::is_regular_file(p, ec);
    std::string ext = p.extension().string();
    if (is_file && (ext == ".yaml" || ext == ".yml")) {
      Sweep s = load_sweep(a);
      for (auto& run : s.runs) add(run.run_dir);
      continue;
    }
    if (fs::is_directory(p, ec) && !has_run_files(p)) {
      std::vector<std::string> children;
      bool any_run = false;
      for (auto& e : fs::directory_iterator(p, ec)) {
        if (!e.is_directory()) continue;
        children.push_back(e.path().string());
        any_run |= has_run_files(e.path());
      }
      if (any_run) {
        std::sort(children.begin(), children.end());
        for (auto& c : children) add(c);
        continue;
      }
    }
    add(a);
  }
  return out;
}

ReportResult write_report(const std::vector<std::string>& run_dirs, const std::string& out_dir, bool with_constant) {
  ReportOptions o;
  o.with_constant = with_constant;
  return write_report(run_dirs, out_dir, o);
}

ReportResult write_report(const std::vector<std::string>& run_dirs, const std::string& out_dir,
                          const ReportOptions& options) {
  COIL_CHECK(!run_dirs.empty(), "report: no run directories given");
  COIL_CHECK(!out_dir.empty(), "report: no output directory given (--out DIR)");
  ReportResult res;
  for (const auto& d : run_dirs) {
    res.runs.push_back(read_run(d));
    const std::string& s = res.runs.back().status;
    (s == "finished" ? res.finished : s == "interrupted" ? res.interrupted : s == "corrupt" ? res.corrupt : res.missing) += 1;
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  COIL_CHECK(!ec && fs::is_directory(out_dir), "report: cannot create the output directory '{}': {}", out_dir,
             ec.message());

  // ---- fits, one per architecture (in order of first appearance) ----
  std::vector<std::string> archs;
  for (auto& r : res.runs)
    if (!r.architecture.empty() && std::find(archs.begin(), archs.end(), r.architecture) == archs.end())
      archs.push_back(r.architecture);
  for (auto& arch : archs) {
    ArchitectureFit f;
    f.architecture = arch;
    std::vector<double> x, y;
    for (auto& r : res.runs)
      if (r.architecture == arch && r.status == "finished" && std::isfinite(r.val_loss) && r.val_loss > 0 &&
          r.flops > 0) {
        x.push_back(r.flops);
        y.push_back(r.val_loss);
      }
    f.points = int(x.size());
    if (!x.empty()) {
      f.flops_min = *std::min_element(x.begin(), x.end());
      f.flops_max = *std::max_element(x.begin(), x.end());
    }
    try {
      f.fit = fit_power_law(x, y, options.with_constant);
      f.ok = true;
    } catch (const std::exception& e) {
      f.problem = e.what();
      const char* prefix = "fit_power_law: ";
      if (f.problem.rfind(prefix, 0) == 0) f.problem = f.problem.substr(std::strlen(prefix));
    }
    res.fits.push_back(f);
  }
  for (size_t i = 0; i < res.fits.size(); ++i)
    for (size_t j = i + 1; j < res.fits.size(); ++j)
      if (res.fits[i].ok && res.fits[j].ok) res.crossovers.push_back(cross_architectures(res.fits[i], res.fits[j]));

  fs::path out(out_dir);
  // ---- runs.csv ----
  {
    std::string csv =
        "run,status,architecture,preset,d_model,n_layer,parameters,non_embedding_parameters,seq_len,"
        "tokens_per_step,steps,planned_steps,tokens,flops_per_token,flops,val_loss,val_step,train_loss,wall_s,"
        "tokens_per_s,segments,run_dir,problem,val_perplexity\n";
    for (auto& r : res.runs) {
      csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", csv_text(r.name),
                         r.status, csv_text(r.architecture), csv_text(r.preset), r.d_model, r.n_layer, r.parameters,
                         r.non_embedding_parameters, r.seq_len, r.tokens_per_step, r.steps, r.planned_steps, r.tokens,
                         csv_num(r.flops_per_token), csv_num(r.flops), csv_num(r.val_loss),
                         r.val_step >= 0 ? std::to_string(r.val_step) : "", csv_num(r.train_loss), csv_num(r.wall_s),
                         csv_num(r.tokens_per_s), r.segments, csv_text(r.run_dir), csv_text(r.problem),
                         csv_num(std::exp(r.val_loss)));
    }
    res.csv = (out / "runs.csv").string();
    replace_file(res.csv, csv);
  }
  // ---- curves.csv, fits.csv (inputs of the plots) ----
  {
    std::string csv = "run,architecture,status,split,step,tokens,loss,parameters\n";
    for (auto& r : res.runs) {
      for (auto* curve : {&r.train_curve, &r.val_curve})
        for (auto& p : *curve)
          csv += fmt::format("{},{},{},{},{},{},{},{}\n", csv_text(r.name), csv_text(r.architecture), r.status,
                             curve == &r.train_curve ? "train" : "val", p.step, p.tokens, csv_num(p.loss),
                             r.parameters);
    }
    res.curves_csv = (out / "curves.csv").string();
    replace_file(res.curves_csv, csv);
    std::string fits =
        "architecture,points,ok,a,b,c,rmse_log,flops_min,flops_max,b_se,b_low,b_high,dof,t95,mean_log_x,sxx,"
        "residual_var\n";
    for (auto& f : res.fits) {
      const PowerLawFit& p = f.fit;
      auto num = [&](double v) { return f.ok ? csv_num(v) : std::string(); };
      const bool spread = f.ok && std::isfinite(p.b_se);
      fits += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", csv_text(f.architecture), f.points,
                          f.ok ? 1 : 0, num(p.a), num(p.b), num(p.c), num(p.rmse_log), csv_num(f.flops_min),
                          csv_num(f.flops_max), num(p.b_se), num(p.b - p.b_margin()), num(p.b + p.b_margin()),
                          spread ? std::to_string(p.dof()) : "", spread ? csv_num(student_t_quantile(0.95, p.dof())) : "",
                          spread ? csv_num(p.mean_log_x) : "", spread ? csv_num(p.sxx) : "", num(p.residual_var));
    }
    res.fits_csv = (out / "fits.csv").string();
    replace_file(res.fits_csv, fits);
    std::string cross = "first,second,ok,x,bounded,low,high,differ_low,differ_high,sentence\n";
    for (auto& x : res.crossovers) {
      const Crossover& c = x.crossover;
      cross += fmt::format("{},{},{},{},{},{},{},{},{},{}\n", csv_text(x.first), csv_text(x.second), x.ok ? 1 : 0,
                           csv_num(c.x), c.bounded ? 1 : 0, csv_num(c.low), csv_num(c.high), csv_num(c.differ_low),
                           csv_num(c.differ_high), csv_text(x.sentence));
    }
    res.crossovers_csv = (out / "crossovers.csv").string();
    replace_file(res.crossovers_csv, cross);
  }

  // ---- plots ----
  if (options.plots) {
    PlotResult plot = run_plot_script("plot_scaling.py", {out.string(), "--title", dir_name(out.string())}, options.plot);
    if (plot.drawn) {
      for (const char* name : {"loss_vs_flops.png", "loss_curves.png"}) {
        fs::path p = out / name;
        if (fs::exists(p, ec)) res.plots.push_back(p.string());
        else res.warnings.push_back(fmt::format("the plot script wrote no {}", name));
      }
    } else {
      res.warnings.push_back((plot.exit_code > 0 && plot.exit_code != 3 ? "plots failed: " : "plots skipped: ") +
                             plot.problem);
    }
  }

  // ---- report.md ----
  std::string md;
  md += "# Scaling report\n\n";
  md += fmt::format("{} runs: {} finished, {} interrupted, {} corrupt{}. Fits use finished runs with a validation "
                    "loss; FLOPs are training FLOPs (forward + backward) as the model counts them "
                    "(docs/SCALING.md).\n\n",
                    res.runs.size(), res.finished, res.interrupted, res.corrupt,
                    res.missing ? fmt::format(", {} missing", res.missing) : "");
  md += "| run | architecture | d_model x layers | parameters | non-embedding | tokens | FLOPs | val loss | "
        "val ppl | train loss | wall | tokens/s | status |\n";
  md += "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
  for (auto& r : res.runs) {
    bool sized = r.parameters > 0;
    md += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n", md_text(r.name),
                      r.architecture.empty() ? "-" : r.architecture,
                      sized ? fmt::format("{} x {}", r.d_model, r.n_layer) : "-",
                      sized ? human_count(double(r.parameters)) : "-",
                      sized ? human_count(double(r.non_embedding_parameters)) : "-",
                      sized && r.tokens > 0 ? human_count(double(r.tokens)) : "-", sci(r.flops),
                      loss_text(r.val_loss),
                      std::isfinite(r.val_loss) ? fmt::format("{:.2f}", std::exp(r.val_loss)) : "-",
                      loss_text(r.train_loss), duration_text(r.wall_s),
                      std::isfinite(r.tokens_per_s) ? human_count(r.tokens_per_s) : "-", r.status);
  }
  bool any_notes = false;
  for (auto& r : res.runs)
    if (!r.problem.empty()) {
      if (!any_notes) md += "\nNotes:\n\n";
      any_notes = true;
      md += fmt::format("- `{}` ({}): {}\n", r.run_dir, r.status, md_text(r.problem));
    }

  md += fmt::format("\n## Fits: loss = a * FLOPs^(-b){}\n\n", options.with_constant ? " + c" : "");
  md += "| architecture | runs | a | b | b: 95% interval (se) | c | rmse (log loss) | FLOPs range |\n";
  md += "| --- | ---: | ---: | ---: | --- | ---: | ---: | --- |\n";
  for (auto& f : res.fits) {
    const PowerLawFit& p = f.fit;
    std::string interval = std::isfinite(p.b_se) ? fmt::format("{:.4f} .. {:.4f} ({:.4f})", p.b - p.b_margin(),
                                                               p.b + p.b_margin(), p.b_se)
                           : options.with_constant ? "- (c fitted)"
                                                   : "- (3 runs needed)";
    if (f.ok)
      md += fmt::format("| {} | {} | {:.4g} | {:.4f} | {} | {:.4f} | {:.2e} | {} .. {} |\n", f.architecture, f.points,
                        p.a, p.b, interval, p.c, p.rmse_log, sci(f.flops_min), sci(f.flops_max));
    else
      md += fmt::format("| {} | {} | - | - | - | - | - | no fit: {} |\n", f.architecture, f.points,
                        md_text(f.problem));
  }
  md += "\nIntervals: least squares on log loss against log FLOPs, Student's t on runs - 2 degrees of freedom "
        "(scaling/power_law.h); one seed a run, so they measure the scatter of the runs about the line, not the "
        "spread over seeds.\n";
  if (!res.crossovers.empty()) {
    md += "\n## Crossover\n\n";
    for (auto& x : res.crossovers) md += fmt::format("- {} and {}: {}.\n", x.first, x.second, md_text(x.sentence));
  }
  // Predicted loss of each fit at equal budgets: the decades the fitted runs span.
  std::vector<const ArchitectureFit*> ok;
  double lo = INFINITY, hi = 0;
  for (auto& f : res.fits)
    if (f.ok) {
      ok.push_back(&f);
      lo = std::min(lo, f.flops_min);
      hi = std::max(hi, f.flops_max);
    }
  if (ok.size() >= 2) {
    std::vector<double> budgets;
    for (int e = int(std::ceil(std::log10(lo) - 1e-9)); e <= int(std::floor(std::log10(hi) + 1e-9)); ++e)
      budgets.push_back(std::pow(10.0, e));
    if (budgets.empty()) budgets.push_back(std::sqrt(lo * hi));
    md += "\nPredicted loss at equal training FLOPs, with the 95% interval of the fitted line where it has one "
          "(* = outside that architecture's fitted range):\n\n";
    md += "| FLOPs |";
    for (auto* f : ok) md += " " + f->architecture + " |";
    md += "\n| ---: |";
    for (size_t i = 0; i < ok.size(); ++i) md += " ---: |";
    md += "\n";
    for (double b : budgets) {
      md += fmt::format("| {} |", sci(b));
      for (auto* f : ok) {
        bool outside = b < f->flops_min * 0.999 || b > f->flops_max * 1.001;
        const double margin = f->fit.log_margin(b);  // of log(loss - c): +- (loss - c) * margin to first order
        md += fmt::format(" {}{}{} |", loss_text(f->fit.predict(b)),
                          std::isfinite(margin) ? fmt::format(" ± {:.4f}", (f->fit.predict(b) - f->fit.c) * margin) : "",
                          outside ? "*" : "");
      }
      md += "\n";
    }
  }
  md += "\n## Plots\n\n";
  for (auto& p : res.plots) md += fmt::format("![{}]({})\n\n", fs::path(p).stem().string(), fs::path(p).filename().string());
  if (res.plots.empty()) md += "(none)\n\n";
  if (!res.warnings.empty()) {
    md += "## Warnings\n\n";
    for (auto& w : res.warnings) md += "- " + md_text(w) + "\n";
    md += "\n";
  }
  md += "Files: runs.csv (every run), curves.csv (loss curves), fits.csv, crossovers.csv.\n";
  res.markdown = (out / "report.md").string();
  replace_file(res.markdown, md);
  return res;
}

std::string format_report_summary(const ReportResult& r) {
  std::string s = fmt::format("{} runs: {} finished, {} interrupted, {} corrupt", r.runs.size(), r.finished,
                              r.interrupted, r.corrupt);
  if (r.missing) s += fmt::format(", {} missing", r.missing);
  s += "\n";
  for (auto& f : r.fits) {
    if (f.ok)
      s += fmt::format("  {}: loss = {:.4g} * FLOPs^{:.4f}{} ({} runs, rmse(log) {:.2e}{})\n", f.architecture, f.fit.a,
                       -f.fit.b, f.fit.c != 0 ? fmt::format(" + {:.4f}", f.fit.c) : "", f.points, f.fit.rmse_log,
                       std::isfinite(f.fit.b_se) ? fmt::format(", exponent 95% +- {:.4f}", f.fit.b_margin()) : "");
    else
      s += fmt::format("  {}: no fit ({})\n", f.architecture, f.problem);
  }
  for (auto& x : r.crossovers) s += fmt::format("  {} and {}: {}\n", x.first, x.second, x.sentence);
  for (auto& w : r.warnings) s += "warning: " + w + "\n";
  s += fmt::format("wrote {}, {}", r.markdown, r.csv);
  for (auto& p : r.plots) s += ", " + p;
  return s;
}

}  // namespace coil::scaling
