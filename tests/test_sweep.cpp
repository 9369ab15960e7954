#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/catch.h"
#include "train/report.h"
#include "train/sweep.h"

using namespace coil::train;

namespace {
std::string write_file(const std::string& name, const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / "coil_test_sweep";
  std::filesystem::create_directories(dir);
  auto path = dir / name;
  std::ofstream(path) << text;
  return path.string();
}
}  // namespace

TEST_CASE("a sweep expands into the product of its axes, zipping keys within an axis", "[sweep]") {
  std::string path = write_file("grid.yaml", R"(base: ../base.yaml
out_dir: runs/grid
set: {train.steps: 50}
axes:
  - model.preset: [mamba-tiny, transformer++-tiny]
    optim.lr: [3e-3, 1e-3]
  - train.seed: [1, 2, 3]
)");
  Sweep s = load_sweep(path);
  REQUIRE(s.runs.size() == 6);
  REQUIRE(s.base_config == (std::filesystem::temp_directory_path() / "base.yaml").lexically_normal().string());
  REQUIRE(s.runs[0].name == "mamba-tiny_1");
  REQUIRE(s.runs[5].name == "transformer++-tiny_3");
  REQUIRE(s.runs[4].run_dir == "runs/grid/transformer++-tiny_2");
  using KV = std::pair<std::string, std::string>;
  REQUIRE(s.runs[4].overrides == std::vector<KV>{{"train.steps", "50"}, {"model.preset", "transformer++-tiny"},
                                                 {"optim.lr", "1e-3"}, {"train.seed", "2"}});
}

TEST_CASE("sweep errors name the file, the line and the key", "[sweep]") {
  REQUIRE_THROWS_WITH(load_sweep(write_file("zip.yaml", "base: b.yaml\naxes:\n  - {a.b: [1, 2], c.d: [1]}\n")),
                      Catch::Matchers::Contains("zip.yaml:3: axis key 'c.d' has 1 values"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("empty.yaml", "base: b.yaml\naxes: []\n")),
                      Catch::Matchers::Contains("expands to nothing"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("unknown.yaml", "base: b.yaml\ngird: []\n")),
                      Catch::Matchers::Contains("unknown.yaml:2: unknown key 'gird'"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("nobase.yaml", "axes: []\n")), Catch::Matchers::Contains("'base'"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("dup.yaml", "base: b.yaml\naxes:\n  - {a: [x, x]}\n")),
                      Catch::Matchers::Contains("both named 'x'"));
  REQUIRE_THROWS_WITH(load_sweep("/nonexistent/sweep.yaml"), Catch::Matchers::Contains("cannot read"));
}

// ---- `coil sweep` and `coil report` through the built program (the coil target) ----

namespace {

namespace fs = std::filesystem;

// The coil executable of this build: <build>/coil, next to tests/.
std::string coil_program() {
  fs::path exe = fs::read_symlink("/proc/self/exe");
  fs::path coil = exe.parent_path().parent_path() / "coil";
  INFO("the coil executable is expected at " << coil.string() << " (build the coil target)");
  REQUIRE(fs::exists(coil));
  return coil.string();
}

struct Ran {
  int status = -1;
  std::string output;  // stdout and stderr
};

Ran run(const std::string& command) {
  Ran r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  int status = ::pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

// A tiny grid on the CPU: 2 architectures x 2 widths, 8 steps each.
fs::path tiny_grid(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / "coil_test_sweep" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "base.yaml") << R"(run: {name: base}
model: {preset: mamba-tiny, n_layer: 1, vocab_size: 64}
data: {kind: synthetic, task: selective_copying, task_vocab: 8, copy_tokens: 4}
train: {seq_len: 32, micro_batch: 2, steps: 8, device: cpu, seed: 0}
optim: {lr: 1.0e-3, warmup: 2}
eval: {every: 4, batches: 1}
checkpoint: {every: 0, keep_last: 1}
log: {every: 2}
)";
  std::ofstream(dir / "grid.yaml") << "base: base.yaml\nout_dir: " << (dir / "runs").string() << R"(
set: {optim.min_lr: 1.0e-4}
axes:
  - name: [mamba, tpp]
    model.preset: [mamba-tiny, transformer++-tiny]
  - model.d_model: [16, 32]
)";
  return dir;
}

}  // namespace

TEST_CASE("coil sweep runs a tiny grid, skips finished runs, resumes an interrupted one; coil report tabulates it",
          "[sweep]") {
  const std::string coil = coil_program();
  const fs::path dir = tiny_grid("cli");
  const std::string grid = (dir / "grid.yaml").string();
  const std::vector<std::string> names = {"mamba_16", "mamba_32", "tpp_16", "tpp_32"};

  // --print: one `coil train` command a run, nothing run.
  Ran printed = run(shell_quote(coil) + " sweep " + shell_quote(grid) + " --print");
  REQUIRE(printed.status == 0);
  std::vector<std::string> commands;
  std::stringstream lines(printed.output);
  for (std::string line; std::getline(lines, line);) commands.push_back(line);
  REQUIRE(commands.size() == 4);
  CHECK(commands[2].rfind(coil + " train ", 0) == 0);
  CHECK(commands[2].find("--set run.name=tpp_16 --set optim.min_lr=1.0e-4 --set model.preset=transformer++-tiny "
                         "--set model.d_model=16 --set run.dir=") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "runs"));

  // An interrupted run: the first command, stopped (with a checkpoint) after 3 of its 8 steps.
  Ran partial = run(commands[0] + " --stop-after 3");
  INFO(partial.output);
  REQUIRE(partial.status == 0);
  RunRecord first = read_run((dir / "runs" / "mamba_16").string());
  CHECK(first.status == "interrupted");
  CHECK(first.checkpoint_step == 3);

  // The sweep resumes it from step 3 and runs the other three.
  Ran swept = run(shell_quote(coil) + " sweep " + shell_quote(grid));
  INFO(swept.output);
  REQUIRE(swept.status == 0);
  CHECK(swept.output.find("run 1/4 mamba_16: resuming") != std::string::npos);
  CHECK(swept.output.find("from step 3") != std::string::npos);
  CHECK(swept.output.find("run 4/4 tpp_32: starting") != std::string::npos);
  CHECK(swept.output.find("4 runs: 4 finished (0 skipped") != std::string::npos);
  for (auto& n : names) {
    RunRecord r = read_run((dir / "runs" / n).string());
    INFO(n << ": " << r.problem);
    CHECK(r.status == "finished");
    CHECK(r.steps == 8);
    CHECK(r.val_step == 8);
    CHECK(r.segments == (n == "mamba_16" ? 2 : 1));
  }
  CHECK(read_run((dir / "runs" / "tpp_32").string()).architecture == "transformer++");
  CHECK(read_run((dir / "runs" / "tpp_32").string()).d_model == 32);

  // Again: every run is skipped, nothing is written.
  const std::string metrics_before = read_text(dir / "runs" / "tpp_16" / "metrics.jsonl");
  Ran again = run(shell_quote(coil) + " sweep " + shell_quote(grid));
  INFO(again.output);
  REQUIRE(again.status == 0);
  CHECK(count(again.output, "finished already") == 4);
  CHECK(again.output.find("4 runs: 4 finished (4 skipped") != std::string::npos);
  CHECK(read_text(dir / "runs" / "tpp_16" / "metrics.jsonl") == metrics_before);

  // A time limit already passed starts nothing and says so (exit status 3).
  fs::remove_all(dir / "runs" / "tpp_32");
  Ran late = run(shell_quote(coil) + " sweep " + shell_quote(grid) + " --time-limit 1e-9");
  CHECK(late.status == 3);
  CHECK(late.output.find("1 not started; the time limit was reached") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "runs" / "tpp_32"));

  // The report: every run in the table, the missing one as missing; Markdown and CSV; the plot.
  Ran report = run(shell_quote(coil) + " report " + shell_quote(grid) + " --out " + shell_quote((dir / "report").string()));
  INFO(report.output);
  REQUIRE(report.status == 0);
  std::string csv = read_text(dir / "report" / "runs.csv");
  CHECK(count(csv, ",finished,") == 3);
  CHECK(csv.find("tpp_32,missing,") != std::string::npos);
  std::string md = read_text(dir / "report" / "report.md");
  CHECK(md.find("4 runs: 3 finished, 0 interrupted, 0 corrupt, 1 missing") != std::string::npos);
  for (auto& n : names) CHECK(md.find("| " + n + " |") != std::string::npos);
  if (std::system("python3 -c 'import matplotlib' >/dev/null 2>&1") != 0 &&
      std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") != 0) {
    WARN("python3 with matplotlib is missing: the PNG check is skipped (apt-get install python3-matplotlib)");
    CHECK(md.find("plots skipped") != std::string::npos);
  } else {
    CHECK(fs::file_size(dir / "report" / "loss_vs_flops.png") > 1000);
    CHECK(fs::file_size(dir / "report" / "loss_curves.png") > 1000);
  }
}

TEST_CASE("a sweep key that no config has names the sweep file, its line and the run", "[sweep]") {
  const fs::path dir = tiny_grid("badkey");
  std::ofstream(dir / "bad.yaml") << "base: base.yaml\nout_dir: " << (dir / "runs").string() << R"(
axes:
  - model.preset: [mamba-tiny, transformer++-tiny]
  - model.d_modle: [16, 32]
)";
  Sweep s = load_sweep((dir / "bad.yaml").string());
  REQUIRE(s.runs.size() == 4);
  REQUIRE_THROWS_WITH(check_sweep(s), Catch::Matchers::Contains("bad.yaml:5: run 'mamba-tiny_16'") &&
                                          Catch::Matchers::Contains("unknown key 'model.d_modle'") &&
                                          Catch::Matchers::Contains("did you mean 'model.d_model'"));
  // A bad value: the run and the key.
  std::ofstream(dir / "badvalue.yaml") << "base: base.yaml\nout_dir: runs\nset: {train.steps: many}\naxes:\n  - {train.seed: [1]}\n";
  REQUIRE_THROWS_WITH(check_sweep(load_sweep((dir / "badvalue.yaml").string())),
                      Catch::Matchers::Contains("badvalue.yaml:3: run 'run'") && Catch::Matchers::Contains("train.steps"));
  // The program refuses it before running anything.
  Ran r = run(shell_quote(coil_program()) + " sweep " + shell_quote((dir / "bad.yaml").string()));
  CHECK(r.status == 1);
  CHECK(r.output.find("unknown key 'model.d_modle'") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "runs"));
}
