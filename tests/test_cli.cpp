// The coil program end to end (the coil target must be built): sweep, report, prepare.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/version.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/token_file.h"
#include "kernels/matmul.h"
#include "scaling/report.h"
#include "scaling/sweep.h"
#include "tests/catch.h"
#include "tests/files.h"
#include "train/checkpoint.h"

using namespace coil;
using namespace coil::data;
using namespace coil::train;
using coil::scaling::RunRecord;
using coil::scaling::read_run;
using coil::scaling::shell_quote;
namespace fs = std::filesystem;

namespace {

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

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

// A tiny grid on the CPU: 2 architectures x 2 widths, 8 steps each.
fs::path tiny_grid(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / "coil_test_cli" / name;
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

TEST_CASE("coil --version prints the version and what the build uses", "[cli]") {
  Ran r = run(shell_quote(coil_program()) + " --version");
  INFO(r.output);
  REQUIRE(r.status == 0);
  REQUIRE(r.output.rfind("coil " + version_string() + "\nbuilt with: ", 0) == 0);
  REQUIRE(std::string(version()).find('.') != std::string::npos);  // project(VERSION), as "0.1.0"
  CHECK(r.output.find("CPU threads: ") != std::string::npos);
  CHECK((r.output.find("OpenBLAS") != std::string::npos) == !kernels::cpu::blas_name().empty());
  // The CPU kernels' thread count comes from COIL_CPU_THREADS when it is set.
  Ran three = run("COIL_CPU_THREADS=3 " + shell_quote(coil_program()) + " --version");
  CHECK(three.output.find("CPU threads: 3\n") != std::string::npos);
  Ran bad = run("COIL_CPU_THREADS=two " + shell_quote(coil_program()) + " --version");
  CHECK(bad.status == 1);
  CHECK(bad.output.find("COIL_CPU_THREADS must be a whole number from 1 to 1024, got 'two'") != std::string::npos);
}

TEST_CASE("coil sweep runs a tiny grid, skips finished runs, resumes an interrupted one; coil report tabulates it",
          "[cli]") {
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
  const std::string metrics_before = test::read_text(dir / "runs" / "tpp_16" / "metrics.jsonl");
  Ran again = run(shell_quote(coil) + " sweep " + shell_quote(grid));
  INFO(again.output);
  REQUIRE(again.status == 0);
  CHECK(count(again.output, "finished already") == 4);
  CHECK(again.output.find("4 runs: 4 finished (4 skipped") != std::string::npos);
  CHECK(test::read_text(dir / "runs" / "tpp_16" / "metrics.jsonl") == metrics_before);

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
  std::string csv = test::read_text(dir / "report" / "runs.csv");
  CHECK(count(csv, ",finished,") == 3);
  CHECK(csv.find("tpp_32,missing,") != std::string::npos);
  std::string md = test::read_text(dir / "report" / "report.md");
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

TEST_CASE("coil sweep refuses a sweep with a key that no config has before running anything", "[cli]") {
  const fs::path dir = tiny_grid("badkey");
  std::ofstream(dir / "bad.yaml") << "base: base.yaml\nout_dir: " << (dir / "runs").string() << R"(
axes:
  - model.preset: [mamba-tiny, transformer++-tiny]
  - model.d_modle: [16, 32]
)";
  Ran r = run(shell_quote(coil_program()) + " sweep " + shell_quote((dir / "bad.yaml").string()));
  CHECK(r.status == 1);
  CHECK(r.output.find("bad.yaml:5: run 'mamba-tiny_16'") != std::string::npos);
  CHECK(r.output.find("unknown key 'model.d_modle'") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "runs"));
}

TEST_CASE("coil prepare trains a SentencePiece model, saves it beside the output and applies it", "[cli]") {
  const std::string coil = shell_quote(coil_program());
  const fs::path dir = fs::temp_directory_path() / "coil_test_cli" / "prepare";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; i < 300; ++i)
    text += "The selective scan of layer " + std::to_string(i % 17) + " reads the state space model's inputs.\n";
  std::ofstream(dir / "a.txt") << text;
  std::ofstream(dir / "b.txt") << "A held-out line about the state space model.\n";
  const std::string train = (dir / "train.h5").string(), val = (dir / "val.h5").string();
  Ran trained = run(coil + " prepare --tokenizer sentencepiece --vocab-size 400 --out " + shell_quote(train) + " " +
                    shell_quote((dir / "a.txt").string()));
  INFO(trained.output);
  if (!sentencepiece_available()) {
    CHECK(trained.status == 1);
    CHECK(trained.output.find("built without SentencePiece") != std::string::npos);
    return;
  }
  REQUIRE(trained.status == 0);
  REQUIRE(fs::exists(dir / "train.model"));
  Ran applied = run(coil + " prepare --sp-model " + shell_quote((dir / "train.model").string()) + " --out " +
                    shell_quote(val) + " " + shell_quote((dir / "b.txt").string()));
  INFO(applied.output);
  REQUIRE(applied.status == 0);
  TokenDataset a(train, 0), b(val, 0);
  CHECK(a.files()[0].tokenizer.rfind("sentencepiece-bpe-", 0) == 0);
  CHECK(a.files()[0].tokenizer == b.files()[0].tokenizer);
  CHECK(a.files()[0].eot_token == 1);
  CHECK(a.files()[0].num_tokens < int64_t(text.size()));  // pieces merge bytes
  CHECK(read_tokenizer_model(val) == test::read_text(dir / "train.model"));
  CHECK(trained.output.find("trained on the inputs") != std::string::npos);
}

TEST_CASE("coil generate continues prompts with the run's tokenizer, or as ids; bad input is named", "[cli]") {
  const std::string coil = shell_quote(coil_program());
  const fs::path dir = test::fresh_dir("coil_test_cli", "generate");
  std::string text;
  for (int i = 0; i < 60; ++i) text += "the quick brown fox jumps over the lazy dog. ";
  test::write_text(dir / "text.txt", text);
  const std::string data = (dir / "text.h5").string();
  REQUIRE(run(coil + " prepare --out " + shell_quote(data) + " " + shell_quote((dir / "text.txt").string())).status == 0);
  // A byte-level run and a synthetic one, a few steps each (what they generate is not checked).
  auto train = [&](const std::string& name, const std::string& model, const std::string& data_section) {
    const fs::path config = dir / (name + ".yaml"), run_dir = dir / name;
    test::write_text(config, "run: {name: " + name + ", dir: " + run_dir.string() + "}\nmodel: " + model +
                                 "\ndata: " + data_section + R"(
train: {seq_len: 32, micro_batch: 2, steps: 2, device: cpu, seed: 0}
optim: {lr: 1.0e-3, warmup: 1}
eval: {every: 0, batches: 1}
checkpoint: {every: 0, keep_last: 1}
log: {every: 1}
)");
    Ran r = run(coil + " train " + shell_quote(config.string()));
    INFO(r.output);
    REQUIRE(r.status == 0);
    return shell_quote(run_dir.string());
  };
  // One head of 64: generation runs on a GPU where there is one (--device auto), whose
  // attention kernels take head dims 64, 96 and 128.
  const std::string text_run = train("bytes",
                                     "{preset: transformer++-tiny, n_layer: 1, d_model: 64, vocab_size: 257, "
                                     "attention: {n_head: 1}}",
                                     "{kind: tokens, path: " + data + ", val_fraction: 0.1}");
  const std::string synthetic_run =
      train("synthetic", "{preset: mamba-tiny, n_layer: 1, d_model: 32, vocab_size: 10}",
            "{kind: synthetic, task: selective_copying, task_vocab: 8, copy_tokens: 4}");
  const std::string generate = coil + " generate " + text_run + " --max-new-tokens 5";

  Ran one = run(generate + " --prompt 'the quick'");
  INFO(one.output);
  CHECK(one.status == 0);
  CHECK(one.output.rfind("the quick", 0) == 0);  // the prompt, then its continuation
  CHECK(one.output.find("generate: 1 prompt(s), ") != std::string::npos);
  test::write_text(dir / "prompts.txt", "the lazy\nbrown fox\n");
  Ran file = run(generate + " --prompt-file " + shell_quote((dir / "prompts.txt").string()) + " --temperature 0.7");
  INFO(file.output);
  CHECK(file.status == 0);
  CHECK(file.output.rfind("the lazy", 0) == 0);
  CHECK(file.output.find("\n\nbrown fox") != std::string::npos);
  CHECK(file.output.find("generate: 2 prompt(s), ") != std::string::npos);
  Ran piped = run("printf 'over the\\n' | " + generate + " --no-echo --top-k 5 --seed 3");
  INFO(piped.output);
  CHECK(piped.status == 0);
  CHECK(piped.output.find("over the") == std::string::npos);
  Ran ids = run(generate + " --ids --prompt '116 104 101' --max-new-tokens 2");
  INFO(ids.output);
  CHECK(ids.status == 0);
  CHECK(ids.output.rfind("116 104 101", 0) == 0);

  auto fails_with = [&](const std::string& command, const std::string& message) {
    Ran r = run(command);
    INFO(command << "\n" << r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find(message) != std::string::npos);
  };
  fails_with(generate + " --prompt x --top-p 1.5", "top_p must be in (0, 1]");
  fails_with(generate + " --prompt ''", "the prompt (--prompt) is empty");
  test::write_text(dir / "gap.txt", "one\n\nthree\n");
  fails_with(generate + " --prompt-file " + shell_quote((dir / "gap.txt").string()), "(line 2 of ");
  fails_with(generate + " --ids --prompt '1 x'", "'x' in the prompt (--prompt) is not a token id");
  fails_with(generate + " --ids --prompt '300'", "token id 300 at position 0, outside the model's vocabulary");
  fails_with(coil + " generate " + synthetic_run + " --prompt hello", "has no text tokenizer: give the prompts as token ids with --ids");
  Ran synthetic_ids = run(coil + " generate " + synthetic_run + " --ids --prompt '0 3 0 9' --max-new-tokens 2");
  INFO(synthetic_ids.output);
  CHECK(synthetic_ids.status == 0);
  fs::rename(data, dir / "moved.h5");
  fails_with(generate + " --prompt x", "(data.path) are not there: pass --tokenizer FILE");
  CHECK(run(generate + " --prompt x --tokenizer " + shell_quote((dir / "moved.h5").string())).status == 0);
}

namespace {

// A sweep of two runs too long to finish during the test (a million tiny steps each).
fs::path long_grid(const std::string& name) {
  fs::path dir = tiny_grid(name);
  std::ofstream(dir / "long.yaml") << "base: base.yaml\nout_dir: " << (dir / "runs").string() << R"(
set: {train.steps: 1000000, eval.every: 0}
axes:
  - train.seed: [1, 2]
)";
  return dir;
}

// Starts `coil ARGS > LOG 2>&1` in the background; returns its pid.
pid_t start(const std::string& args, const fs::path& log) {
  std::string cmd = "exec " + shell_quote(coil_program()) + " " + args + " > " + shell_quote(log.string()) + " 2>&1";
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

int wait_status(pid_t pid) {
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("Ctrl-C and the time limit stop a sweep: the running run saves a checkpoint, no other run starts", "[cli]") {
  const fs::path dir = long_grid("stop");
  const std::string sweep = shell_quote((dir / "long.yaml").string());
  const fs::path metrics = dir / "runs" / "1" / "metrics.jsonl";

  // SIGINT once the first run is training (has logged a step): passed on to it once (a second
  // would end it unsaved).
  pid_t pid = start("sweep " + sweep, dir / "interrupted.log");
  auto training = [&] { return test::read_text(metrics).find("\"tokens\":") != std::string::npos; };
  for (int i = 0; i < 600 && !training(); ++i) usleep(50000);
  REQUIRE(training());
  kill(pid, SIGINT);
  CHECK(wait_status(pid) == 128 + SIGINT);
  std::string log = test::read_text(dir / "interrupted.log");
  INFO(log);
  CHECK(log.find("interrupted by SIGINT") != std::string::npos);
  CHECK(log.find("second signal") == std::string::npos);
  CHECK(log.find("1 interrupted, 0 failed, 1 not started; stopped by signal 2") != std::string::npos);
  RunRecord first = read_run((dir / "runs" / "1").string());
  CHECK(first.status == "interrupted");
  CHECK(first.checkpoint_step > 0);
  CHECK_FALSE(fs::exists(dir / "runs" / "2"));

  // The time limit: the first run resumes from its checkpoint and is stopped the same way.
  Ran limited = run(shell_quote(coil_program()) + " sweep " + sweep + " --time-limit 2");
  INFO(limited.output);
  CHECK(limited.status == 3);
  CHECK(limited.output.find(fmt::format("from step {}", first.checkpoint_step)) != std::string::npos);
  CHECK(limited.output.find("1 not started; the time limit was reached") != std::string::npos);
  CHECK(read_run((dir / "runs" / "1").string()).checkpoint_step > first.checkpoint_step);
  CHECK_FALSE(fs::exists(dir / "runs" / "2"));
  CHECK_FALSE(fs::exists(dir / "runs" / "2.lock"));  // a run not started is not claimed either
}

TEST_CASE("several sweeps of one file share its runs out: a run another sweep trains is passed over", "[cli]") {
  const fs::path dir = long_grid("shared");
  const std::string sweep = shell_quote((dir / "long.yaml").string());

  // Sweep A trains run 1; sweep B, started meanwhile, passes over it to run 2.
  pid_t a = start("sweep " + sweep, dir / "a.log");
  const fs::path metrics = dir / "runs" / "1" / "metrics.jsonl";
  auto training = [&] { return test::read_text(metrics).find("\"tokens\":") != std::string::npos; };
  for (int i = 0; i < 600 && !training(); ++i) usleep(50000);
  REQUIRE(training());
  Ran b = run(shell_quote(coil_program()) + " sweep " + sweep + " --time-limit 2");
  INFO(b.output);
  CHECK(b.status == 3);  // run 2 stopped by the time limit
  CHECK(b.output.find("run 1/2 1: another sweep is training it") != std::string::npos);
  CHECK(b.output.find("run 2/2 2: starting") != std::string::npos);
  CHECK(b.output.find("1 interrupted, 0 failed, 0 not started, 1 training in another sweep") != std::string::npos);
  CHECK(read_run((dir / "runs" / "2").string()).checkpoint_step > 0);
  kill(a, SIGINT);
  CHECK(wait_status(a) == 128 + SIGINT);
  CHECK(read_run((dir / "runs" / "1").string()).status == "interrupted");

  // Two sweeps of a whole grid at once: every run trains once, in one of them, and finishes.
  const fs::path grid_dir = tiny_grid("shared-grid");
  const std::string grid = shell_quote((grid_dir / "grid.yaml").string());
  pid_t first = start("sweep " + grid, grid_dir / "first.log");
  Ran second = run(shell_quote(coil_program()) + " sweep " + grid);
  CHECK(wait_status(first) == 0);
  CHECK(second.status == 0);
  const std::string both = test::read_text(grid_dir / "first.log") + second.output;
  INFO(both);
  CHECK(count(both, ": starting") == 4);
  for (const char* n : {"mamba_16", "mamba_32", "tpp_16", "tpp_32"}) {
    RunRecord r = read_run((grid_dir / "runs" / n).string());
    CHECK(r.status == "finished");
    CHECK(r.segments == 1);
  }
}

TEST_CASE("first-use mistakes get clear errors naming the value, and exit 1", "[cli]") {
  const std::string coil = shell_quote(coil_program());
  const fs::path dir = tiny_grid("mistakes");
  const std::string base = shell_quote((dir / "base.yaml").string());
  const fs::path run_dir = dir / "run";
  const std::string run_arg = shell_quote(run_dir.string());
  Ran trained = run(coil + " train " + base + " --set train.steps=2 --set run.dir=" + run_arg);
  INFO(trained.output);
  REQUIRE(trained.status == 0);

  auto fails_with = [&](const std::string& args, const std::string& message) {
    Ran r = run("cd " + shell_quote(dir.string()) + " && " + coil + " " + args);
    INFO("coil " << args << "\n" << r.output);
    CHECK(r.status == 1);
    CHECK(r.output.find("error: " + message) != std::string::npos);
  };
  // A directory given to train: no default job in ./runs/default.
  fails_with("train " + run_arg,
             "config: '" + run_dir.string() + "' is a run directory, not a config file: to continue its run, coil "
             "resume " + run_dir.string());
  fails_with("train .", "config: '.' is a directory, not a config file");
  CHECK_FALSE(fs::exists(dir / "runs"));
  // Numbers: the option and the value, never stoi.
  fails_with("info " + base + " --world 0 --set train.tokens_per_step=4096",
             "--world expects a whole number in [1, 1048576], got '0'");
  fails_with("info " + base + " --world -2", "--world expects a whole number in [1, 1048576], got '-2'");
  fails_with("eval " + run_arg + " --batches -3", "--batches expects a whole number >= 1 or all, got '-3'");
  fails_with("eval " + run_arg + " --batches lots", "--batches expects a whole number >= 1 or all, got 'lots'");
  fails_with("resume " + run_arg + " --stop-after 2x", "--stop-after expects a whole number >= 0, got '2x'");
  fails_with("launch --nproc two -- info " + base, "--nproc expects a whole number in [1, 1024], got 'two'");
  fails_with("eval " + run_arg + " --batches all",
             "--set eval.batches=all: eval.batches: all is the whole held-out split of token files");
  // prepare: a folder as input, an output folder that does not exist.
  test::write_text(dir / "text.txt", "some text\n");
  fails_with("prepare --out out.h5 " + shell_quote(dir.string()), "prepare: '" + dir.string() + "' is a folder");
  fails_with("prepare --out missing/out.h5 text.txt",
             "hdf5: cannot create 'missing/out.h5.tmp': the folder 'missing' does not exist");
  // eval of a run whose checkpoints are all damaged: an error, not the initial weights.
  for (auto& p : list_checkpoints(run_dir.string())) fs::resize_file(p, 100);
  fails_with("eval " + run_arg, "eval: no checkpoint of " + run_dir.string() + " can be used");
}

TEST_CASE("coil train --time-limit stops with status 3; coil eval --lengths and coil plot draw with a Python that "
          "has matplotlib",
          "[cli]") {
  const std::string coil = shell_quote(coil_program());
  const fs::path dir = test::fresh_dir("coil_test_cli", "lengths");
  const fs::path run_dir = dir / "ih";
  test::write_text(dir / "ih.yaml", "run: {dir: " + run_dir.string() + R"(}
model: {preset: mamba-tiny, d_model: 16, n_layer: 1, vocab_size: 9}
data: {kind: synthetic, task: induction_heads, task_vocab: 8}
train: {seq_len: 16, micro_batch: 4, steps: 6, device: cpu}
optim: {lr: 1.0e-3, warmup: 0, schedule: constant, weight_decay: 0}
eval: {every: 0, batches: 1}
checkpoint: {every: 0, keep_last: 1}
log: {every: 1}
)");
  const std::string config = shell_quote((dir / "ih.yaml").string());
  Ran limited = run(coil + " train " + config + " --time-limit 1e-9");
  INFO(limited.output);
  CHECK(limited.status == 3);
  CHECK(limited.output.find("(the time limit)") != std::string::npos);
  CHECK(limited.output.find("stopped at step 1/6") != std::string::npos);
  Ran rest = run(coil + " train " + config);
  CHECK(rest.status == 0);
  CHECK(rest.output.find("resuming") != std::string::npos);

  const std::string run_arg = shell_quote(run_dir.string());
  Ran lengths = run(coil + " eval " + run_arg + " --lengths 8..32 --examples 4");
  INFO(lengths.output);
  REQUIRE(lengths.status == 0);
  CHECK(lengths.output.find("accuracy (%) by sequence length") != std::string::npos);
  CHECK(lengths.output.find("2^4*") != std::string::npos);
  CHECK(count(test::read_text(run_dir / "length_eval.csv"), "\n") == 4);
  CHECK(run(coil + " eval " + run_arg + " --lengths 8,x").output.find("'x' in '8,x'") != std::string::npos);
  CHECK(run(coil + " eval " + run_arg + " --examples 3").output.find("--examples belongs to the length sweep") !=
        std::string::npos);

  Ran unknown = run(coil + " plot nosuch");
  CHECK(unknown.status == 1);
  CHECK(unknown.output.find("unknown kind 'nosuch'") != std::string::npos);
  if (std::system("python3 -c 'import matplotlib' >/dev/null 2>&1") != 0 &&
      std::system("/usr/bin/python3 -c 'import matplotlib' >/dev/null 2>&1") != 0) {
    WARN("python3 with matplotlib is missing: the PNG checks are skipped (apt-get install python3-matplotlib)");
    CHECK(lengths.output.find("warning: no plot: no python3 with matplotlib") != std::string::npos);
    return;
  }
  CHECK(fs::file_size(run_dir / "length_eval.png") > 1000);
  // Whatever python3 comes first on the PATH: a Python that does not exist is passed over.
  Ran curves = run("COIL_PYTHON=/nonexistent/python3 " + coil + " plot runs " + run_arg + " -o " +
                   shell_quote((dir / "loss.png").string()));
  INFO(curves.output);
  CHECK(curves.status == 0);
  CHECK(fs::file_size(dir / "loss.png") > 1000);
  Ran both = run(coil + " plot lengths " + run_arg + " " + shell_quote((run_dir / "length_eval.csv").string()) +
                 " -o " + shell_quote((dir / "lengths.png").string()));
  CHECK(both.status == 0);
  CHECK(fs::file_size(dir / "lengths.png") > 1000);
  Ran bad = run(coil + " plot runs " + shell_quote((dir / "nothing").string()) + " -o x.png");
  CHECK(bad.status == 1);
  CHECK(bad.output.find("cannot read") != std::string::npos);
}
