// The length sweep (`coil eval RUN --lengths ...`, scaling/length_eval.h) on the CPU: the lengths
// parser, accuracy per length on a tiny trained run (the same numbers as a plain evaluation at
// that length), the CSV, a learned position table that is too short, and an out-of-memory
// length (a real allocation failure under an address-space limit) that the sweep survives.
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "scaling/length_eval.h"
#include "tests/catch.h"
#include "tests/files.h"
#include "train/trainer.h"

using namespace coil;
using namespace coil::scaling;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

// A tiny induction-heads run on the CPU, trained for a few steps (its checkpoint is evaluated).
train::Config tiny_run(const std::string& name, std::vector<std::string> extra = {}) {
  fs::path dir = test::fresh_dir("coil_test_length_eval", name);
  std::vector<std::string> sets = {"run.dir=" + dir.string(), "model.preset=mamba-tiny", "model.d_model=16",
                                   "model.n_layer=1", "model.vocab_size=9", "data.task=induction_heads",
                                   "data.task_vocab=8", "train.seq_len=16", "train.micro_batch=4", "train.steps=3",
                                   "train.device=cpu", "optim.warmup=0", "eval.every=0", "eval.batches=0",
                                   "log.every=1"};
  for (auto& e : extra) sets.push_back(e);
  train::Config c = train::parse_config("", name + ".yaml", sets);
  train::TrainOptions o;
  o.quiet = true;
  o.install_signal_handlers = false;
  train::run_training(c, o);
  return c;
}

std::vector<std::vector<std::string>> csv_rows(const std::string& path) {
  std::vector<std::vector<std::string>> rows;
  std::stringstream lines(test::read_text(path));
  for (std::string line; std::getline(lines, line);) {
    std::vector<std::string> cells;
    std::stringstream fields(line);
    for (std::string cell; std::getline(fields, cell, ',');) cells.push_back(cell);
    if (!line.empty() && line.back() == ',') cells.push_back("");
    rows.push_back(cells);
  }
  return rows;
}

// The address space this process uses now, in bytes.
rlim_t address_space_in_use() {
  std::stringstream statm(test::read_text("/proc/self/statm"));
  rlim_t pages = 0;
  statm >> pages;
  return pages * rlim_t(sysconf(_SC_PAGESIZE));
}

}  // namespace

TEST_CASE("--lengths lists: commas, power-of-two ranges, clear errors", "[length_eval]") {
  REQUIRE(parse_lengths("64,256,1000") == std::vector<int64_t>{64, 256, 1000});
  REQUIRE(parse_lengths("64..1024") == std::vector<int64_t>{64, 128, 256, 512, 1024});
  REQUIRE(parse_lengths("8..16,3") == std::vector<int64_t>{8, 16, 3});
  REQUIRE(parse_lengths("64..1048576").size() == 15);  // the paper's 2^6 .. 2^20
  REQUIRE_THROWS_WITH(parse_lengths("64,abc"), Contains("'abc' in '64,abc' is not a positive whole number"));
  REQUIRE_THROWS_WITH(parse_lengths("0"), Contains("'0'"));
  REQUIRE_THROWS_WITH(parse_lengths("64,"), Contains("'' in '64,'"));
  REQUIRE_THROWS_WITH(parse_lengths("64..100"), Contains("both must be powers of two"));
  REQUIRE_THROWS_WITH(parse_lengths("256..64"), Contains("A <= B"));
}

TEST_CASE("the length sweep scores each length like a plain evaluation at that length and writes the CSV",
          "[length_eval]") {
  train::Config c = tiny_run("sweep");
  LengthEvalOptions o;
  o.lengths = {8, 16, 40};
  o.examples = 6;
  o.batch_tokens = 32;  // batches of 4, 2 and 1 examples: 8, 6 and 6 examples
  std::vector<std::string> said;
  LengthEvalResult r = evaluate_lengths(c, o, [&](const std::string& s) { said.push_back(s); });
  REQUIRE(r.step == 3);
  REQUIRE(r.train_length == 16);
  REQUIRE(r.chance == Approx(1.0 / 8));
  REQUIRE(r.rows.size() == 3);
  const std::vector<int64_t> batch = {4, 2, 1}, examples = {8, 6, 6};
  for (size_t i = 0; i < 3; ++i) {
    const LengthRow& row = r.rows[i];
    INFO("length " << row.length);
    REQUIRE(row.status == "ok");
    REQUIRE(row.batch == batch[i]);
    REQUIRE(row.examples == examples[i]);
    REQUIRE(row.accuracy == Approx(double(row.correct) / double(row.examples)));
    // The same examples through `coil eval` at this length give the same loss and accuracy.
    train::Config at = c;
    at.train.seq_len = row.length;
    at.train.micro_batch = row.batch;
    at.eval.batches = row.examples / row.batch;
    train::EvalResult e = train::evaluate(at, "");
    REQUIRE(e.targets == row.examples);  // one answer per induction-heads example
    REQUIRE(e.accuracy == Approx(row.accuracy));
    REQUIRE(e.loss == Approx(row.loss));
  }
  REQUIRE(said.size() == 4);  // the model, then one line per length
  REQUIRE_THAT(said[3], Contains("length       40: 6 examples (batches of 1), accuracy"));

  // The CSV: a header and one row per length, as written after each length.
  REQUIRE(r.csv == (fs::path(c.run_dir()) / "length_eval.csv").string());
  auto rows = csv_rows(r.csv);
  REQUIRE(rows.size() == 4);
  REQUIRE(rows[0] == std::vector<std::string>{"run", "task", "train_length", "step", "length", "examples", "batch",
                                              "correct", "accuracy", "loss", "chance", "status", "seconds",
                                              "peak_memory_bytes"});
  for (size_t i = 1; i < 4; ++i) {
    const LengthRow& row = r.rows[i - 1];
    REQUIRE(rows[i].size() == 14);
    CHECK(rows[i][0] == "sweep");
    CHECK(rows[i][1] == "induction_heads");
    CHECK(rows[i][2] == "16");
    CHECK(rows[i][3] == "3");
    CHECK(rows[i][4] == std::to_string(row.length));
    CHECK(rows[i][5] == std::to_string(row.examples));
    CHECK(rows[i][7] == std::to_string(row.correct));
    CHECK(std::stod(rows[i][8]) == Approx(row.accuracy));
    CHECK(std::stod(rows[i][10]) == Approx(0.125));
    CHECK(rows[i][11] == "ok");
    CHECK(rows[i][13] == "");  // no device memory on the CPU
  }
  std::string table = format_length_table({r});
  CHECK_THAT(table, Contains("2^3     2^4*       40"));
  CHECK_THAT(table, Contains("examples        8        6        6"));
}

TEST_CASE("the length sweep refuses runs without answers and marks lengths beyond a learned position table",
          "[length_eval]") {
  LengthEvalOptions o;
  o.lengths = {16, 32};
  o.examples = 2;
  train::Config random = train::parse_config("", "r.yaml", {"data.task=random", "train.device=cpu"});
  REQUIRE_THROWS_WITH(evaluate_lengths(random, o), Contains("has no answers to score"));

  train::Config c = tiny_run("learned", {"model.preset=gpt2-tiny", "model.d_model=16", "model.attention.n_head=1",
                                         "model.attention.max_seq_len=16"});
  LengthEvalResult r = evaluate_lengths(c, o);
  REQUIRE(r.rows.size() == 2);
  CHECK(r.rows[0].status == "ok");
  CHECK(r.rows[1].status == "too long");
  CHECK(r.rows[1].examples == 0);
  CHECK_THAT(r.rows[1].note, Contains("max_seq_len) has 16 positions"));
  auto rows = csv_rows(r.csv);
  REQUIRE(rows.size() == 3);
  CHECK(rows[2][11] == "too long");
  CHECK(rows[2][8] == "");  // no accuracy
  CHECK_THAT(format_length_table({r}), Contains("long"));
}

TEST_CASE("a length that runs out of memory is reported as OOM and the sweep goes on", "[length_eval]") {
  train::Config c = tiny_run("oom");
  LengthEvalOptions o;
  o.lengths = {16, int64_t(1) << 22, 32};  // 2^22: its activations (256 MiB each) do not fit
  o.examples = 2;
  // A real allocation failure: the address space is capped at what is in use plus 192 MiB
  // (enough for the data of a 2^22 sequence, not for the model's activations).
  rlimit old{};
  REQUIRE(getrlimit(RLIMIT_AS, &old) == 0);
  rlimit cap = old;
  cap.rlim_cur = address_space_in_use() + (rlim_t(192) << 20);
  if (old.rlim_cur != RLIM_INFINITY && old.rlim_cur < cap.rlim_cur) cap.rlim_cur = old.rlim_cur;
  REQUIRE(setrlimit(RLIMIT_AS, &cap) == 0);
  LengthEvalResult r;
  std::string error;
  try {
    r = evaluate_lengths(c, o);
  } catch (const std::exception& e) {
    error = e.what();
  }
  REQUIRE(setrlimit(RLIMIT_AS, &old) == 0);
  INFO(error);
  REQUIRE(error.empty());
  REQUIRE(r.rows.size() == 3);
  CHECK(r.rows[0].status == "ok");
  CHECK(r.rows[1].status == "OOM");
  CHECK(r.rows[1].examples == 0);
  CHECK_THAT(r.rows[1].note, Contains("out of host memory"));
  CHECK(r.rows[2].status == "ok");
  auto rows = csv_rows(r.csv);
  REQUIRE(rows.size() == 4);
  CHECK(rows[2][4] == "4194304");
  CHECK(rows[2][11] == "OOM");
  CHECK_THAT(format_length_table({r}), Contains("OOM"));
}

TEST_CASE("on a GPU, a Mamba answers at 2^20, one sequence a batch, in bounded memory", "[cuda]") {
  train::Config c = tiny_run("gpu", {"train.device=cuda"});
  LengthEvalOptions o;
  o.lengths = {256, int64_t(1) << 20};
  o.examples = 2;
  LengthEvalResult r = evaluate_lengths(c, o);
  REQUIRE(r.rows.size() == 2);
  const LengthRow& longest = r.rows[1];
  REQUIRE(longest.status == "ok");
  REQUIRE(longest.batch == 1);
  REQUIRE(longest.examples == 2);
  REQUIRE(longest.peak_memory_bytes > 0);
  WARN("d_model 16, 1 layer, length 2^20: peak " << longest.peak_memory_bytes / double(1 << 20) << " MiB, "
       << longest.seconds << " s for 2 sequences");
  // No activations kept for a backward: about a dozen (2^20, 32) tensors at a time, not all of them.
  CHECK(longest.peak_memory_bytes < (int64_t(1) << 30));
}
