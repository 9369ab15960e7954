#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "layers/model.h"
#include "scaling/report.h"
#include "scaling/sweep.h"
#include "tests/catch.h"
#include "tests/files.h"
#include "train/config.h"
#include "train/info.h"
#include "train/trainer.h"

using namespace coil;
using namespace coil::scaling;
using coil::train::Config;
using coil::train::EvalSection;
using coil::train::ModelInfo;
using coil::train::config_differences;
using coil::train::model_info;
using coil::train::parse_config;
using coil::train::to_yaml;
namespace fs = std::filesystem;

namespace {

// A resolved config as the trainer writes it into a run directory.
Config make_config(const fs::path& dir, const std::vector<std::string>& overrides) {
  std::vector<std::string> o = {"train.seq_len=64", "train.micro_batch=4", "train.steps=100", "eval.every=50",
                                "log.every=10",     "run.dir=" + dir.string()};
  o.insert(o.end(), overrides.begin(), overrides.end());
  Config c = parse_config("run: {name: test}\n", "test", o);
  fs::create_directories(dir);
  test::write_text(dir / "config.yaml", to_yaml(c));
  return c;
}

// metrics.jsonl lines in the trainer's format.
std::string train_line(int64_t step, int64_t tokens, double loss, double elapsed) {
  return fmt::format(
      "{{\"step\":{},\"tokens\":{},\"loss\":{},\"lr\":0.0006,\"grad_norm\":0.8,\"tokens_per_s\":1000,\"mfu\":-1,"
      "\"memory_bytes\":1000000,\"elapsed_s\":{}}}\n",
      step, tokens, loss, elapsed);
}
std::string val_line(int64_t step, int64_t tokens, double loss) {
  return fmt::format("{{\"step\":{},\"tokens\":{},\"val_loss\":{},\"val_ppl\":{}}}\n", step, tokens, loss,
                     std::exp(loss));
}

// A run of `steps` steps of 256 tokens (4 x 64), logged every 10, evaluated every 50 and at the
// end; `stop` < steps: the run stops there. Training takes 0.01 s per step.
std::string metrics_text(int64_t steps, int64_t stop, double final_val) {
  std::string m;
  for (int64_t s = 10; s <= stop; s += 10) {
    m += train_line(s, s * 256, 5.0 - double(s) / 100.0, 0.01 * double(s));
    if (s % 50 == 0 && s != steps) m += val_line(s, s * 256, final_val + 0.5);
  }
  if (stop == steps) m += val_line(steps, steps * 256, final_val);
  return m;
}

int64_t model_params(const Config& c, bool embeddings) {
  layers::LanguageModel m(c.model.config, 0);
  return m.num_parameters(embeddings);
}

double model_flops(const Config& c) {
  layers::LanguageModel m(c.model.config, 0);
  return m.flops_per_token(c.train.seq_len);
}

bool have_matplotlib() {
  return std::system("python3 -c 'import matplotlib' >/dev/null 2>&1") == 0 ||
         std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") == 0;
}

bool is_png(const std::string& path) {
  std::string head = test::read_text(path).substr(0, 8);
  return head == std::string("\x89PNG\r\n\x1a\n", 8);
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string line;
  while (std::getline(ss, line)) out.push_back(line);
  return out;
}

}  // namespace

TEST_CASE("report: finished, interrupted and corrupt runs are each reported as such", "[report]") {
  fs::path root = test::fresh_dir("coil_test_report", "statuses");
  // finished: all 100 steps and the final evaluation
  Config fin = make_config(root / "mamba_fin", {"model.preset=mamba-tiny"});
  test::write_text(root / "mamba_fin" / "metrics.jsonl", metrics_text(100, 100, 3.25));
  // interrupted: killed at step 60, the last line torn in the middle of its write
  Config intr = make_config(root / "tpp_intr", {"model.preset=transformer++-tiny"});
  test::write_text(root / "tpp_intr" / "metrics.jsonl", metrics_text(100, 60, 3.0) + "{\"step\":70,\"tok");
  // corrupt: a malformed line in the middle of the metrics
  make_config(root / "mamba_bad", {"model.preset=mamba-tiny", "model.d_model=64"});
  test::write_text(root / "mamba_bad" / "metrics.jsonl",
             train_line(10, 2560, 4.9, 0.1) + "garbage\x01\x02 not json\n" + train_line(20, 5120, 4.8, 0.2));
  // corrupt: a config.yaml that does not parse
  fs::create_directories(root / "badcfg");
  test::write_text(root / "badcfg" / "config.yaml", "model: {d_model: [oops\n");
  test::write_text(root / "badcfg" / "metrics.jsonl", train_line(10, 2560, 4.9, 0.1));
  // interrupted before its first step: config.yaml, no metrics
  make_config(root / "nometrics", {"model.preset=mamba-tiny"});

  std::vector<std::string> dirs = {(root / "mamba_fin").string(), (root / "tpp_intr").string(),
                                   (root / "mamba_bad").string(), (root / "badcfg").string(),
                                   (root / "nometrics").string(), (root / "never_started").string()};
  ReportResult r = write_report(dirs, (root / "report").string(), false);
  REQUIRE(r.runs.size() == 6);
  CHECK(r.runs[0].status == "finished");
  CHECK(r.runs[1].status == "interrupted");
  CHECK(r.runs[2].status == "corrupt");
  CHECK(r.runs[3].status == "corrupt");
  CHECK(r.runs[4].status == "interrupted");
  CHECK(r.runs[5].status == "missing");
  CHECK(r.finished == 1);
  CHECK(r.interrupted == 2);
  CHECK(r.corrupt == 2);
  CHECK(r.missing == 1);
  CHECK(r.runs[1].problem.find("stopped at step 60 of 100") != std::string::npos);
  CHECK(r.runs[1].problem.find("torn") != std::string::npos);
  CHECK(r.runs[2].problem.find("line 2") != std::string::npos);
  CHECK(r.runs[3].problem.find("config.yaml") != std::string::npos);

  // The finished run: the model's own counts, tokens, FLOPs, losses, time.
  const RunRecord& f = r.runs[0];
  CHECK(f.architecture == "mamba");
  CHECK(f.parameters == model_params(fin, true));
  CHECK(f.non_embedding_parameters == model_params(fin, false));
  CHECK(f.non_embedding_parameters < f.parameters);
  CHECK(f.tokens == 100 * 256);
  CHECK(f.steps == 100);
  CHECK(f.flops_per_token == Approx(model_flops(fin)).epsilon(1e-12));
  CHECK(f.flops == Approx(model_flops(fin) * 100 * 256).epsilon(1e-12));
  CHECK(f.val_loss == Approx(3.25));
  CHECK(f.val_step == 100);
  CHECK(f.train_loss == Approx(4.0));
  CHECK(f.wall_s == Approx(1.0));
  CHECK(f.tokens_per_s == Approx(25600.0));
  CHECK(f.train_curve.size() == 10);
  CHECK(f.val_curve.size() == 2);
  // The interrupted run keeps its last numbers.
  const RunRecord& i = r.runs[1];
  CHECK(i.architecture == "transformer++");
  CHECK(i.parameters == model_params(intr, true));
  CHECK(i.steps == 60);
  CHECK(i.tokens == 60 * 256);
  CHECK(i.val_loss == Approx(3.5));
  CHECK(i.flops == Approx(model_flops(intr) * 60 * 256).epsilon(1e-12));

  // The CSV: a header and one row per run, in order, with its status.
  auto csv = split_lines(test::read_text(r.csv));
  REQUIRE(csv.size() == 7);
  CHECK(csv[0].rfind("run,status,architecture,preset,d_model,n_layer,parameters,non_embedding_parameters,", 0) == 0);
  CHECK(csv[1].rfind(fmt::format("mamba_fin,finished,mamba,mamba-tiny,128,2,{},{},", f.parameters,
                                 f.non_embedding_parameters), 0) == 0);
  CHECK(csv[2].rfind("tpp_intr,interrupted,transformer++,transformer++-tiny,", 0) == 0);
  CHECK(csv[3].rfind("mamba_bad,corrupt,mamba,mamba-tiny,64,", 0) == 0);
  CHECK(csv[4].rfind("badcfg,corrupt,,", 0) == 0);
  CHECK(csv[5].rfind("nometrics,interrupted,", 0) == 0);
  CHECK(csv[6].rfind("never_started,missing,", 0) == 0);
  CHECK(csv[1].find(",3.25,100,") != std::string::npos);  // val_loss, val_step

  // The Markdown table: one row per run, the status in the last column.
  std::string md = test::read_text(r.markdown);
  CHECK(md.find("6 runs: 1 finished, 2 interrupted, 2 corrupt, 1 missing") != std::string::npos);
  CHECK(md.find("| mamba_fin | mamba | 128 x 2 |") != std::string::npos);
  CHECK(md.find("| 3.2500 |") != std::string::npos);
  for (const char* row : {"| mamba_fin |", "| tpp_intr |", "| mamba_bad |", "| badcfg |", "| nometrics |",
                          "| never_started |"})
    CHECK(md.find(row) != std::string::npos);
  CHECK(md.find("| finished |\n") != std::string::npos);
  CHECK(md.find("| interrupted |\n") != std::string::npos);
  CHECK(md.find("| corrupt |\n") != std::string::npos);
  // One finished run per architecture: no fit, said so.
  REQUIRE(r.fits.size() == 2);
  CHECK_FALSE(r.fits[0].ok);
  CHECK(md.find("no fit") != std::string::npos);
  // curves.csv holds the logged losses of every run that has any.
  auto curves = split_lines(test::read_text(r.curves_csv));
  CHECK(curves[0] == "run,architecture,status,split,step,tokens,loss,parameters");
  CHECK(curves.size() == 1 + 12 + 7 + 1);  // finished 10+2, interrupted 6+1, corrupt: the line before
}

TEST_CASE("report: a finished run without a final evaluation is interrupted; resumed runs sum their time", "[report]") {
  fs::path root = test::fresh_dir("coil_test_report", "resume");
  make_config(root / "noeval", {"model.preset=mamba-tiny"});
  std::string m = metrics_text(100, 100, 3.0);
  m = m.substr(0, m.rfind("{\"step\":100,\"tokens\":25600,\"val_loss\""));
  test::write_text(root / "noeval" / "metrics.jsonl", m);
  RunRecord a = read_run((root / "noeval").string());
  CHECK(a.status == "interrupted");
  CHECK(a.problem.find("no final evaluation") != std::string::npos);

  // Resumed at step 40: elapsed_s restarts; the trainer kept the lines up to the checkpoint.
  make_config(root / "resumed", {"model.preset=mamba-tiny"});
  std::string r;
  for (int s = 10; s <= 40; s += 10) r += train_line(s, s * 256, 4.0, 0.02 * s);   // 0.8 s
  for (int s = 50; s <= 100; s += 10) r += train_line(s, s * 256, 3.5, 0.01 * (s - 40));  // 0.6 s
  r += val_line(100, 25600, 3.1);
  test::write_text(root / "resumed" / "metrics.jsonl", r);
  RunRecord b = read_run((root / "resumed").string());
  CHECK(b.status == "finished");
  CHECK(b.segments == 2);
  CHECK(b.wall_s == Approx(1.4));
  CHECK(b.tokens_per_s == Approx(25600 / 1.4));

  // No evaluation at all (eval.batches 0): finished without a validation loss, not fitted.
  make_config(root / "noval", {"model.preset=mamba-tiny", "eval.batches=0"});
  std::string t;
  for (int s = 10; s <= 100; s += 10) t += train_line(s, s * 256, 4.0, 0.01 * s);
  test::write_text(root / "noval" / "metrics.jsonl", t);
  RunRecord c = read_run((root / "noval").string());
  CHECK(c.status == "finished");
  CHECK(std::isnan(c.val_loss));
  CHECK(c.problem.find("no validation loss") != std::string::npos);

  // Metrics beyond train.steps: not this config's run.
  make_config(root / "beyond", {"model.preset=mamba-tiny", "train.steps=50"});
  test::write_text(root / "beyond" / "metrics.jsonl", metrics_text(100, 100, 3.0));
  CHECK(read_run((root / "beyond").string()).status == "corrupt");
}

TEST_CASE("report: fits recover a known exponent per architecture and plots are drawn", "[report]") {
  fs::path root = test::fresh_dir("coil_test_report", "fits");
  std::vector<std::string> dirs;
  // Four sizes per architecture; the final validation loss follows a known power law of FLOPs.
  struct Arch {
    std::string preset;
    double a, b;
  };
  for (const Arch& arch : {Arch{"mamba-tiny", 40.0, 0.07}, Arch{"transformer++-tiny", 55.0, 0.08}}) {
    int k = 0;
    for (int d : {64, 128, 192, 256}) {
      fs::path dir = root / fmt::format("{}-d{}", arch.preset, d);
      int64_t steps = 100 * (k + 1);
      Config c = make_config(dir, {"model.preset=" + arch.preset, fmt::format("model.d_model={}", d),
                                   fmt::format("train.steps={}", steps)});
      double flops = model_flops(c) * double(steps * 256);
      double loss = arch.a * std::pow(flops, -arch.b);
      std::string m;
      for (int64_t s = 10; s <= steps; s += 10) m += train_line(s, s * 256, loss + 1.0 / double(s), 0.001 * s);
      m += val_line(steps, steps * 256, loss);
      test::write_text(dir / "metrics.jsonl", m);
      dirs.push_back(dir.string());
      ++k;
    }
  }
  ReportResult r = write_report(dirs, (root / "report").string(), false);
  REQUIRE(r.finished == 8);
  REQUIRE(r.fits.size() == 2);
  CHECK(r.fits[0].architecture == "mamba");
  CHECK(r.fits[1].architecture == "transformer++");
  REQUIRE(r.fits[0].ok);
  REQUIRE(r.fits[1].ok);
  CHECK(r.fits[0].points == 4);
  CHECK(r.fits[0].fit.b == Approx(0.07).epsilon(1e-6));
  CHECK(r.fits[0].fit.a == Approx(40.0).epsilon(1e-4));
  CHECK(r.fits[1].fit.b == Approx(0.08).epsilon(1e-6));
  CHECK(r.fits[1].fit.a == Approx(55.0).epsilon(1e-4));
  std::string md = test::read_text(r.markdown);
  CHECK(md.find("| mamba | 4 | 40 | 0.0700 |") != std::string::npos);
  CHECK(md.find("| transformer++ | 4 | 55 | 0.0800 |") != std::string::npos);
  CHECK(md.find("Predicted loss at equal training FLOPs") != std::string::npos);
  auto fits = split_lines(test::read_text(r.fits_csv));
  REQUIRE(fits.size() == 3);
  CHECK(fits[1].rfind("mamba,4,1,", 0) == 0);
  CHECK(fits[0].find(",b_se,b_low,b_high,dof,t95,mean_log_x,sxx,residual_var") != std::string::npos);
  // Exact laws: no scatter, so the exponent's interval is the point itself.
  CHECK(r.fits[0].fit.b_se == Approx(0).margin(1e-9));
  CHECK(md.find("| 0.0700 .. 0.0700 (0.0000) |") != std::string::npos);
  CHECK(md.find("| val ppl |") != std::string::npos);
  CHECK(md.find(fmt::format("| {:.2f} |", std::exp(r.runs[0].val_loss))) != std::string::npos);
  // 40 C^-0.07 = 55 C^-0.08 at C = (55/40)^100, below every run here: no crossover in range.
  const double cross = std::pow(55.0 / 40.0, 100.0);
  REQUIRE(r.crossovers.size() == 1);
  CHECK(r.crossovers[0].ok);
  CHECK(r.crossovers[0].crossover.x == Approx(cross).epsilon(1e-6));
  CHECK(r.crossovers[0].crossover.bounded);
  CHECK(md.find(fmt::format("- mamba and transformer++: none in range: the fits cross at {:.3g} FLOPs", cross)) !=
        std::string::npos);
  CHECK(md.find("where mamba is lower throughout") != std::string::npos);
  auto crossovers = split_lines(test::read_text(r.crossovers_csv));
  REQUIRE(crossovers.size() == 2);
  CHECK(crossovers[1].rfind("mamba,transformer++,1,", 0) == 0);

  // The same runs with an irreducible loss added: the fit with a constant finds it.
  for (auto& d : dirs) {
    std::string m = test::read_text(fs::path(d) / "metrics.jsonl");
    RunRecord rec = read_run(d);
    double with_c = rec.val_loss + 1.5;
    size_t pos = m.rfind("\"val_loss\":");
    size_t end = m.find(',', pos);
    m = m.substr(0, pos) + fmt::format("\"val_loss\":{:.17g}", with_c) + m.substr(end);
    test::write_text(fs::path(d) / "metrics.jsonl", m);
  }
  ReportOptions o;
  o.with_constant = true;
  o.plots = false;
  ReportResult rc = write_report(dirs, (root / "report_c").string(), o);
  REQUIRE(rc.fits[0].ok);
  CHECK(rc.fits[0].fit.c == Approx(1.5).margin(0.02));
  CHECK(rc.fits[0].fit.b == Approx(0.07).margin(0.01));
  CHECK(std::isnan(rc.fits[0].fit.b_se));  // no interval when c is fitted, and no crossover
  REQUIRE(rc.crossovers.size() == 1);
  CHECK_FALSE(rc.crossovers[0].ok);
  CHECK(rc.crossovers[0].sentence.find("without --with-constant") != std::string::npos);
  CHECK(rc.plots.empty());

  // The plots of the first report.
  if (!have_matplotlib()) {
    WARN("python3 with matplotlib is missing: the PNG check is skipped (apt-get install python3-matplotlib)");
    CHECK(!r.warnings.empty());
    return;
  }
  INFO("warnings: " << (r.warnings.empty() ? "" : r.warnings[0]));
  REQUIRE(r.plots.size() == 2);
  for (auto& p : r.plots) {
    CHECK(fs::file_size(p) > 10000);
    CHECK(is_png(p));
  }
  CHECK(fs::path(r.plots[0]).filename() == "loss_vs_flops.png");
  CHECK(fs::path(r.plots[1]).filename() == "loss_curves.png");
  CHECK(md.find("![loss_vs_flops](loss_vs_flops.png)") != std::string::npos);
}

TEST_CASE("report: noisy laws that cross inside the runs' range give a crossover with its interval", "[report]") {
  fs::path root = test::fresh_dir("coil_test_report", "crossover");
  // mamba 40 C^-0.07 and transformer++ 40 (1e11)^0.03 C^-0.10 cross at C = 1e11 (mamba lower below,
  // transformer++ above, its exponent being larger); each run's loss is off its law by a fixed
  // few tenths of a percent.
  const double cross = 1e11;
  struct Arch {
    std::string preset;
    double a, b;
    std::vector<double> noise;
  };
  std::vector<std::string> dirs;
  for (const Arch& arch : {Arch{"mamba-tiny", 40.0, 0.07, {0.004, -0.003, 0.005, -0.004, 0.001}},
                           Arch{"transformer++-tiny", 40.0 * std::pow(cross, 0.03), 0.10,
                                {-0.002, 0.004, -0.005, 0.003, -0.001}}}) {
    for (int k = 0; k < 5; ++k) {
      const int d = 64 + 48 * k;
      const int64_t steps = 100 * (k + 1);
      fs::path dir = root / fmt::format("{}-d{}", arch.preset, d);
      Config c = make_config(dir, {"model.preset=" + arch.preset, fmt::format("model.d_model={}", d),
                                   fmt::format("train.steps={}", steps), "eval.every=0"});
      double loss = arch.a * std::pow(model_flops(c) * double(steps * 256), -arch.b) * std::exp(arch.noise[size_t(k)]);
      test::write_text(dir / "metrics.jsonl", train_line(steps, steps * 256, loss, 1.0) +
                                                  val_line(steps, steps * 256, loss));
      dirs.push_back(dir.string());
    }
  }
  ReportOptions o;
  o.plots = have_matplotlib();
  ReportResult r = write_report(dirs, (root / "report").string(), o);
  REQUIRE(r.finished == 10);
  REQUIRE(r.fits.size() == 2);
  REQUIRE(r.fits[0].fit.b_se > 0);
  CHECK(std::fabs(r.fits[0].fit.b - 0.07) < r.fits[0].fit.b_margin());
  CHECK(std::fabs(r.fits[1].fit.b - 0.10) < r.fits[1].fit.b_margin());
  REQUIRE(r.crossovers.size() == 1);
  const Crossover& c = r.crossovers[0].crossover;
  REQUIRE(c.bounded);
  CHECK(c.low < cross);
  CHECK(cross < c.high);
  CHECK(c.low < c.x);
  CHECK(c.x < c.high);
  CHECK(r.fits[0].flops_min < c.x);
  CHECK(c.x < r.fits[0].flops_max);
  std::string md = test::read_text(r.markdown);
  CHECK(md.find(fmt::format("- mamba and transformer++: crossover in range: the fits cross at {:.3g} FLOPs (95% "
                            "interval {:.3g} .. {:.3g}); mamba is lower below it, transformer++ above.",
                            c.x, c.low, c.high)) != std::string::npos);
  CHECK(md.find("| mamba | 5 | ") != std::string::npos);
  if (o.plots) REQUIRE(r.plots.size() == 2);
}

TEST_CASE("report: arguments expand a sweep's directory and a sweep file", "[report]") {
  fs::path root = test::fresh_dir("coil_test_report", "expand");
  make_config(root / "sweep" / "a", {"model.preset=mamba-tiny"});
  make_config(root / "sweep" / "b", {"model.preset=mamba-tiny"});
  fs::create_directories(root / "sweep" / "c_empty");  // a run that died before writing anything
  auto dirs = expand_run_args({(root / "sweep").string(), (root / "sweep" / "a").string()});
  REQUIRE(dirs.size() == 3);
  CHECK(fs::path(dirs[0]).filename() == "a");
  CHECK(fs::path(dirs[2]).filename() == "c_empty");
  CHECK(read_run(dirs[2]).status == "corrupt");

  test::write_text(root / "grid.yaml", fmt::format("base: base.yaml\nout_dir: {}\naxes:\n  - name: [a, b, z]\n    "
                                             "model.preset: [mamba-tiny, mamba-tiny, mamba-tiny]\n",
                                             (root / "sweep").string()));
  auto from_sweep = expand_run_args({(root / "grid.yaml").string()});
  REQUIRE(from_sweep.size() == 3);
  CHECK(read_run(from_sweep[2]).status == "missing");
  REQUIRE_THROWS_WITH(write_report({}, (root / "out").string(), false), Catch::Matchers::Contains("no run"));
}

TEST_CASE("report: architecture names follow the model's structure", "[report]") {
  using layers::ModelConfig;
  CHECK(architecture_name(ModelConfig::preset("mamba-130m")) == "mamba");
  CHECK(architecture_name(ModelConfig::preset("transformer++-125m")) == "transformer++");
  CHECK(architecture_name(ModelConfig::preset("gpt2-124m")) == "gpt2");
  CHECK(architecture_name(ModelConfig::preset("hybrid-tiny")) == "hybrid");
}

TEST_CASE("report: the scaling sweeps expand into valid runs of the documented sizes", "[report]") {
  fs::path dir = fs::path(__FILE__).parent_path().parent_path() / "configs" / "scaling";
  if (!fs::exists(dir / "paper.yaml")) return;
  auto runs_of = [](const std::string& path) {
    Sweep s = load_sweep(path);
    std::vector<std::pair<std::string, Config>> out;
    for (auto& run : s.runs) out.emplace_back(run.name, sweep_run_config(s, run));
    return out;
  };
  // The paper: 4 sizes per architecture, Chinchilla tokens, 0.5M-token steps, 5x GPT-3's lr.
  auto paper = runs_of((dir / "paper.yaml").string());
  REQUIRE(paper.size() == 8);
  const double tokens[] = {2.5e9, 7e9, 15e9, 26e9};
  const double lr[] = {3e-3, 1.5e-3, 1.25e-3, 1e-3};
  const double params[] = {130e6, 370e6, 790e6, 1.4e9, 125e6, 350e6, 760e6, 1.3e9};
  for (size_t i = 0; i < 8; ++i) {
    const Config& c = paper[i].second;
    INFO(paper[i].first);
    ModelInfo m = model_info(c);
    CHECK(architecture_name(c.model.config) == (i < 4 ? "mamba" : "transformer++"));
    CHECK(m.tokens_per_step == 524288);
    CHECK(double(m.tokens_per_step) * double(c.train.steps) == Approx(tokens[i % 4]).epsilon(0.001));
    CHECK(c.optim.lr == Approx(lr[i % 4]));
    CHECK(c.optim.min_lr == Approx(1e-5));
    CHECK(c.warmup_steps() == Approx(0.1 * double(c.train.steps)).margin(1.0));
    CHECK(c.optim.schedule == "cosine");
    CHECK(double(m.parameters) == Approx(params[i]).epsilon(0.06));
  }
  // The small grid: four sizes per architecture from ~1M to ~30M parameters, ordered by size
  // (mamba, transformer++ alternating), ~1.75e16 FLOPs in all, on the Linux documentation corpus.
  auto small = runs_of((dir / "small.yaml").string());
  REQUIRE(small.size() == 8);
  double total_flops = 0;
  for (size_t i = 0; i < 8; ++i) {
    const Config& c = small[i].second;
    INFO(small[i].first);
    ModelInfo m = model_info(c);
    CHECK(architecture_name(c.model.config) == (i % 2 == 0 ? "mamba" : "transformer++"));
    CHECK(small[i].first == c.run.name);
    CHECK(c.model.config.vocab_size == 8192);
    CHECK(c.data.path == "datasets/linux-docs/train.h5");
    CHECK(m.parameters >= 1'000'000);
    CHECK(m.parameters <= 31'000'000);
    total_flops += m.flops_per_token * double(m.tokens_per_step) * double(c.train.steps);
    if (i >= 2) CHECK(model_info(small[i - 2].second).parameters < m.parameters);
  }
  CHECK(total_flops == Approx(1.75e16).epsilon(0.05));

  // The compute-optimal grid: six sizes per architecture, ordered by size (mamba, transformer++
  // alternating), 20 tokens per parameter of the size's Mamba model, the same steps, rate and
  // data for the two architectures of a size, no more tokens than the corpus's 365,334,460
  // training tokens (docs/SCALING.md), the whole held-out split at the end.
  auto grid = runs_of((dir / "compute_optimal.yaml").string());
  REQUIRE(grid.size() == 12);
  for (size_t i = 0; i < 12; ++i) {
    const Config& c = grid[i].second;
    INFO(grid[i].first);
    ModelInfo m = model_info(c);
    CHECK(architecture_name(c.model.config) == (i % 2 == 0 ? "mamba" : "transformer++"));
    CHECK(c.data.sampler == "shuffled");
    CHECK(c.data.path == "datasets/linux-source/train-*.h5");
    CHECK(c.eval.batches == EvalSection::kAll);
    CHECK(c.model.config.vocab_size == 8192);
    const double tokens = double(m.tokens_per_step) * double(c.train.steps);
    CHECK(tokens <= 365334460.0);
    if (i % 2 == 0) CHECK(tokens == Approx(20.0 * double(m.parameters)).epsilon(0.001));
    if (i % 2 == 1) {
      const Config& mamba = grid[i - 1].second;
      CHECK(c.train.steps == mamba.train.steps);
      CHECK(c.optim.lr == mamba.optim.lr);
      CHECK(c.train.seed == mamba.train.seed);
      CHECK(c.model.config.d_model == mamba.model.config.d_model);
    }
    if (i >= 2) CHECK(model_info(grid[i - 2].second).parameters < m.parameters);
  }
  CHECK(model_info(grid[0].second).parameters == Approx(1.2e6).epsilon(0.01));
  CHECK(model_info(grid[10].second).parameters == Approx(16.1e6).epsilon(0.01));
  // Its learning-rate sweep: the grid's two smallest sizes, five rates each, otherwise the same runs.
  auto lr_sweep = runs_of((dir / "compute_optimal_lr.yaml").string());
  REQUIRE(lr_sweep.size() == 20);
  for (size_t i = 0; i < 20; ++i) {
    const Config& c = lr_sweep[i].second;
    const Config& same = grid[i / 5].second;
    INFO(lr_sweep[i].first);
    CHECK(c.optim.lr == Approx(1e-3 * std::pow(2.0, double(i % 5))));
    CHECK(c.train.steps == same.train.steps);
    auto diffs = config_differences(c, same, true);
    CHECK(diffs.size() == (c.optim.lr == same.optim.lr ? 0u : 1u));
    for (auto& d : diffs) CHECK(d.rfind("optim.lr:", 0) == 0);
  }
}
