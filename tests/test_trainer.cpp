#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "core/cuda.h"
#include "core/version.h"
#include "data/hdf5_util.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "layers/model.h"
#include "layers/model_facts.h"
#include "tests/catch.h"
#include "tests/files.h"
#include "train/checkpoint.h"
#include "train/hf_interop.h"
#include "train/info.h"
#include "train/safetensors.h"
#include "train/trainer.h"

using namespace coil;
using namespace coil::train;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
// A tiny, fast run on the CPU: a small model on a synthetic task.
Config tiny(const std::string& name, const std::string& preset, std::vector<std::string> extra = {}) {
  fs::path dir = fs::temp_directory_path() / ("coil_test_trainer_" + name);
  fs::remove_all(dir);
  std::vector<std::string> sets = {"run.dir=" + dir.string(), "model.preset=" + preset, "model.d_model=64",
                                   "model.n_layer=2", "model.vocab_size=32", "model.attention.n_head=1",
                                   "data.task=random", "train.seq_len=16", "train.micro_batch=4",
                                   "train.steps=12", "train.device=cpu", "optim.lr=3e-3", "optim.warmup=2",
                                   "eval.every=6", "eval.batches=2", "checkpoint.every=4", "log.every=4"};
  for (auto& e : extra) sets.push_back(e);
  return parse_config("", name + ".yaml", sets);
}
TrainOptions quiet() {
  TrainOptions o;
  o.quiet = true;
  o.install_signal_handlers = false;
  return o;
}
double mean(const std::vector<double>& v, size_t from, size_t to) {
  double s = 0;
  for (size_t i = from; i < to; ++i) s += v[i];
  return s / double(to - from);
}
}  // namespace

TEST_CASE("a tiny Mamba and a tiny Transformer++ learn: the loss falls", "[trainer]") {
  for (std::string preset : {"mamba-tiny", "transformer++-tiny"}) {
    INFO(preset);
    // Induction-free copying of a fixed pattern is easy: the random task with a small vocabulary
    // at least learns the unigram distribution; the copying task learns its answer tokens.
    Config c = tiny("falls_" + preset, preset,
                    {"data.task=selective_copying", "data.task_vocab=8", "data.copy_tokens=4", "train.steps=40",
                     "train.micro_batch=8", "optim.lr=1e-2", "eval.every=0"});
    TrainResult r = run_training(c, quiet());
    REQUIRE(r.losses.size() == 40);
    REQUIRE(mean(r.losses, 30, 40) < mean(r.losses, 0, 5) - 0.3);
    REQUIRE(r.val_accuracy >= 0);
    REQUIRE(fs::exists(fs::path(r.run_dir) / "config.yaml"));
    REQUIRE(fs::exists(fs::path(r.run_dir) / "metrics.jsonl"));
    REQUIRE(list_checkpoints(r.run_dir).size() == 3);  // keep_last 3 of 4, 8, ..., 40
  }
}

TEST_CASE("the Mamba without selection (model.mamba.selective: false) trains: the loss falls", "[trainer]") {
  Config c = tiny("falls_lti", "mamba-tiny",
                  {"model.mamba.selective=false", "data.task=selective_copying", "data.task_vocab=8",
                   "data.copy_tokens=4", "train.steps=40", "train.micro_batch=8", "optim.lr=1e-2", "eval.every=0"});
  TrainResult r = run_training(c, quiet());
  REQUIRE(r.losses.size() == 40);
  REQUIRE(mean(r.losses, 30, 40) < mean(r.losses, 0, 5) - 0.3);
  std::vector<std::string> names;
  for (auto& [name, t] : read_checkpoint(list_checkpoints(r.run_dir).back()).params) names.push_back(name);
  REQUIRE(std::count(names.begin(), names.end(), "backbone.layers.0.mixer.dt_bias") == 1);
  REQUIRE(std::count(names.begin(), names.end(), "backbone.layers.1.mixer.C") == 1);
  REQUIRE(std::count(names.begin(), names.end(), "backbone.layers.0.mixer.x_proj.weight") == 0);
}

TEST_CASE("a time limit stops training after a step with a checkpoint; the same call continues", "[trainer]") {
  Config c = tiny("time_limit", "mamba-tiny", {"eval.every=0", "checkpoint.every=0"});
  TrainOptions o = quiet();
  o.time_limit_s = 1e-9;  // over at once: each call runs one step, then stops
  TrainResult first = run_training(c, o);
  REQUIRE(first.interrupted);
  REQUIRE(first.time_limit_reached);
  REQUIRE(first.signal == 0);
  REQUIRE(first.final_step == 1);
  REQUIRE(fs::path(list_checkpoints(first.run_dir).back()).filename() == "step_00000001.h5");
  TrainResult second = run_training(c, o);
  REQUIRE(second.start_step == 1);
  REQUIRE(second.final_step == 2);
  REQUIRE(second.time_limit_reached);
  o.time_limit_s = 0;
  TrainResult rest = run_training(c, o);
  REQUIRE(!rest.interrupted);
  REQUIRE(!rest.time_limit_reached);
  REQUIRE(rest.final_step == 12);
}

namespace {
// k steps, a stop, a resume and the rest give bitwise the losses, the validation loss and the
// final weights of the uninterrupted run, and metrics.jsonl logs each step once.
void check_exact_resume(const std::string& name, const std::string& preset, std::vector<std::string> extra) {
  extra.push_back("train.tokens_per_step=128");  // 2 micro-batches a step
  Config whole = tiny(name + "_whole", preset, extra);
  TrainResult a = run_training(whole, quiet());
  REQUIRE(a.losses.size() == 12);

  Config parts = tiny(name + "_parts", preset, extra);
  TrainOptions stop = quiet();
  stop.stop_after_steps = 5;
  TrainResult first = run_training(parts, stop);
  REQUIRE(first.interrupted);
  REQUIRE(first.final_step == 5);
  REQUIRE(fs::path(list_checkpoints(first.run_dir).back()).filename() == "step_00000005.h5");
  TrainOptions resume = quiet();
  resume.resume = true;
  TrainResult second = run_training(load_run_config(first.run_dir), resume);
  REQUIRE(second.start_step == 5);
  REQUIRE(second.losses.size() == 7);
  std::vector<double> joined = first.losses;
  joined.insert(joined.end(), second.losses.begin(), second.losses.end());
  for (size_t i = 0; i < 12; ++i) {
    INFO("step " << i + 1);
    REQUIRE(joined[i] == a.losses[i]);  // bitwise
  }
  REQUIRE(second.val_loss == a.val_loss);
  // The final weights agree bitwise too.
  Checkpoint ca = read_checkpoint(list_checkpoints(a.run_dir).back());
  Checkpoint cb = read_checkpoint(list_checkpoints(second.run_dir).back());
  REQUIRE(ca.params.size() == cb.params.size());
  for (size_t i = 0; i < ca.params.size(); ++i)
    REQUIRE(ca.params[i].second.to_vector<float>() == cb.params[i].second.to_vector<float>());
  // metrics.jsonl reads as one run: each logged step once; a start record (the coil version)
  // opens it and marks the resumption.
  std::ifstream in(fs::path(second.run_dir) / "metrics.jsonl");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(std::count_if(lines.begin(), lines.end(), [](auto& l) { return l.rfind("{\"step\":4,", 0) == 0; }) == 1);
  const std::string start = "\"coil_version\":\"" + version_string() + "\"}";
  REQUIRE(lines.at(0) == "{\"step\":0," + start);
  REQUIRE(std::count(lines.begin(), lines.end(), "{\"step\":5," + start) == 1);
}
}  // namespace

TEST_CASE("resuming gives bitwise the losses of the uninterrupted run", "[trainer]") {
  check_exact_resume("resume", "mamba-tiny", {});
}

TEST_CASE("on the GPU in deterministic mode, resuming is exact too", "[trainer][cuda]") {
  for (std::string preset : {"mamba-tiny", "transformer++-tiny"}) {
    INFO(preset);
    for (std::string dtype : {"f32", "bf16"})
      check_exact_resume("resume_cuda_" + preset + "_" + dtype, preset,
                         {"train.device=cuda", "train.dtype=" + dtype, "train.deterministic=true"});
  }
}

namespace {
// A token file of 200 documents of 9 ids below 31, each ended by the eot token 31.
std::string documents_file(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("coil_test_trainer_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string path = (dir / "tokens.h5").string();
  data::TokenWriter w(path, 32, "test", 31);
  for (uint32_t d = 0; d < 200; ++d) {
    std::vector<uint32_t> doc;
    for (uint32_t i = 0; i < 9; ++i) doc.push_back((d * 5 + i * 3) % 31);
    w.append(doc);
    w.end_document();
  }
  w.close();
  return path;
}
std::vector<std::string> carried_state(const std::string& path, bool resets) {
  return {"data.kind=tokens", "data.path=" + path, "data.val_fraction=0.1", "data.sampler=sequential",
          "train.carry_state=true", fmt::format("data.reset_at_eot={}", resets)};
}
}  // namespace

TEST_CASE("with carried state (train.carry_state) resuming is exact too", "[trainer]") {
  check_exact_resume("resume_carry", "mamba-tiny", carried_state(documents_file("carry_data"), true));
}

TEST_CASE("on the GPU in deterministic mode, carried state resumes exactly", "[trainer][cuda]") {
  const std::string path = documents_file("carry_data_cuda");
  for (bool resets : {false, true}) {  // resets: the CUDA scan with seq_idx
    INFO("reset_at_eot " << resets);
    auto sets = carried_state(path, resets);
    for (std::string s : {"train.device=cuda", "train.dtype=bf16", "train.deterministic=true"}) sets.push_back(s);
    check_exact_resume(fmt::format("resume_carry_cuda_{}", resets), "hybrid-tiny", sets);
  }
}

TEST_CASE("a signal saves a checkpoint at the next step boundary and stops", "[trainer]") {
  Config c = tiny("signal", "mamba-tiny");
  TrainOptions o = quiet();
  o.install_signal_handlers = true;
  o.on_step = [](int64_t step, double) {
    if (step == 3) std::raise(SIGTERM);
  };
  TrainResult r = run_training(c, o);
  REQUIRE(r.interrupted);
  REQUIRE(r.signal == SIGTERM);
  REQUIRE(r.final_step == 3);
  REQUIRE(fs::path(list_checkpoints(r.run_dir).back()).filename() == "step_00000003.h5");
}

TEST_CASE("a run directory holding a different run is an error; the same run continues", "[trainer]") {
  Config c = tiny("mismatch", "mamba-tiny", {"train.steps=4"});
  run_training(c, quiet());
  Config other = c;
  apply_override(other, "optim.lr=1e-3");
  REQUIRE_THROWS_WITH(run_training(other, quiet()), Contains("holds a different run") && Contains("optim.lr: 0.003 -> 0.001"));
  // The same run with more steps continues from its checkpoint.
  Config longer = c;
  apply_override(longer, "train.steps=6");
  TrainResult r = run_training(longer, quiet());
  REQUIRE(r.start_step == 4);
  REQUIRE(r.losses.size() == 2);
  // resume needs a run directory.
  TrainOptions resume = quiet();
  resume.resume = true;
  REQUIRE_THROWS_WITH(load_run_config("/nonexistent/run"), Contains("not a run directory"));
}

TEST_CASE("a damaged newest checkpoint: resume falls back to the previous one", "[trainer]") {
  Config c = tiny("fallback", "mamba-tiny", {"train.steps=8"});
  TrainResult r = run_training(c, quiet());
  auto all = list_checkpoints(r.run_dir);
  REQUIRE(all.size() == 2);  // 4 and 8
  fs::resize_file(all.back(), fs::file_size(all.back()) / 3);
  std::vector<std::string> messages;
  TrainOptions o;
  o.resume = true;
  o.install_signal_handlers = false;
  o.print = [&](const std::string& s) { messages.push_back(s); };
  Config more = load_run_config(r.run_dir, {"train.steps=9"});
  TrainResult again = run_training(more, o);
  REQUIRE(again.start_step == 4);
  bool warned = false;
  for (auto& m : messages) warned |= m.find("step_00000008.h5 is damaged") != std::string::npos;
  REQUIRE(warned);
}

TEST_CASE("non-finite losses skip steps and stop after train.max_nan_skips", "[trainer]") {
  // An absurd learning rate blows the weights up within a few steps.
  Config c = tiny("nan", "mamba-tiny", {"optim.lr=10", "optim.grad_clip=0", "optim.min_lr=0", "optim.warmup=0",
                                        "train.max_nan_skips=2", "train.steps=200", "checkpoint.every=0"});
  std::vector<std::string> messages;
  TrainOptions o = quiet();
  o.quiet = false;
  o.print = [&](const std::string& s) { messages.push_back(s); };
  REQUIRE_THROWS_WITH(run_training(c, o), Contains("non-finite loss or gradient (train.max_nan_skips = 2)"));
  int skipped = 0;
  for (auto& m : messages) skipped += m.find("the step is skipped") != std::string::npos;
  REQUIRE(skipped == 3);
}

namespace {
TrainOptions resuming(std::vector<std::string>* messages = nullptr, int64_t stop_after = -1) {
  TrainOptions o = quiet();
  o.resume = true;
  o.stop_after_steps = stop_after;
  if (messages) {
    o.quiet = false;
    o.print = [messages](const std::string& s) { messages->push_back(s); };
  }
  return o;
}
bool said(const std::vector<std::string>& messages, const std::string& what) {
  for (auto& m : messages)
    if (m.find(what) != std::string::npos) return true;
  return false;
}
std::vector<std::string> names(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (auto& p : paths) out.push_back(fs::path(p).filename().string());
  return out;
}
size_t count_lines(const fs::path& path, const std::string& prefix) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += line.rfind(prefix, 0) == 0;
  return n;
}
}  // namespace

TEST_CASE("pruning after a fallback keeps the new good checkpoint; the damaged one is set aside", "[trainer]") {
  Config c = tiny("prune_fallback", "mamba-tiny", {"train.steps=8", "checkpoint.keep_last=2"});
  TrainResult r = run_training(c, quiet());
  REQUIRE(names(list_checkpoints(r.run_dir)) == std::vector<std::string>{"step_00000004.h5", "step_00000008.h5"});
  const std::string newest = list_checkpoints(r.run_dir).back();
  fs::resize_file(newest, fs::file_size(newest) / 3);
  std::vector<std::string> messages;
  TrainResult again =
      run_training(load_run_config(r.run_dir, {"checkpoint.keep_last=1"}), resuming(&messages, 1));
  REQUIRE(again.start_step == 4);
  REQUIRE(said(messages, "moved the damaged checkpoint step_00000008.h5 aside to step_00000008.h5.corrupt"));
  REQUIRE(names(list_checkpoints(r.run_dir)) == std::vector<std::string>{"step_00000005.h5"});
  REQUIRE(fs::exists(newest + ".corrupt"));
  REQUIRE(run_training(load_run_config(r.run_dir), resuming()).start_step == 5);
}

TEST_CASE("every checkpoint damaged: the run starts again and keeps what it writes", "[trainer]") {
  Config c = tiny("prune_all_damaged", "mamba-tiny", {"train.steps=8", "checkpoint.keep_last=2"});
  TrainResult r = run_training(c, quiet());
  for (auto& p : list_checkpoints(r.run_dir)) fs::resize_file(p, 200);  // steps 4 and 8
  Config again = c;
  apply_override(again, "checkpoint.keep_last=1");
  TrainOptions o = quiet();
  o.stop_after_steps = 2;
  TrainResult restart = run_training(again, o);
  REQUIRE(restart.start_step == 0);
  REQUIRE(names(list_checkpoints(r.run_dir)) == std::vector<std::string>{"step_00000002.h5"});
  REQUIRE(fs::exists(checkpoint_path(r.run_dir, 4) + ".corrupt"));
  REQUIRE(fs::exists(checkpoint_path(r.run_dir, 8) + ".corrupt"));
  REQUIRE(read_checkpoint(checkpoint_path(r.run_dir, 2)).state.step == 2);
}

TEST_CASE("a diverging run keeps its checkpoint from before the first skipped step; max_nan_skips can be raised",
          "[trainer]") {
  Config c = tiny("nan_keep", "mamba-tiny",
                  {"optim.lr=10", "optim.grad_clip=0", "optim.min_lr=0", "optim.warmup=0", "train.max_nan_skips=2",
                   "train.steps=200", "checkpoint.every=1", "checkpoint.keep_last=1", "eval.every=0"});
  std::string error;
  try {
    run_training(c, quiet());
  } catch (const Error& e) {
    error = e.what();
  }
  INFO(error);
  const std::string before = newest_before_skips(c.run_dir());
  REQUIRE(!before.empty());
  REQUIRE_THAT(error, Contains("The newest checkpoint from before the first skipped step is kept: " + before));
  Checkpoint kept = read_checkpoint(before);  // verifies
  REQUIRE(kept.state.nan_skips == 0);
  REQUIRE(list_checkpoints(c.run_dir()).size() == 2);  // it and the newest (keep_last 1)
  REQUIRE(read_checkpoint_state(list_checkpoints(c.run_dir()).back()).nan_skips > 0);

  // Allowing more skips is not another run.
  try {
    run_training(load_run_config(c.run_dir(), {"train.max_nan_skips=1000"}), resuming());
  } catch (const Error& e) {
    REQUIRE_THAT(e.what(), !Contains("different run"));
  }
}

TEST_CASE("a failed start writes nothing, so the corrected retry runs", "[trainer]") {
  const fs::path data = test::fresh_dir("coil_test_trainer", "retry_data");
  Config bad = tiny("retry", "mamba-tiny",
                    {"data.kind=tokens", "data.path=" + (data / "train.h5").string(), "train.steps=2"});
  REQUIRE_THROWS_WITH(run_training(bad, quiet()), Contains("no file matches"));
  REQUIRE(!fs::exists(bad.run_dir()));
  test::write_text(data / "text.txt", std::string(4000, 'a') + "some text to learn from, and more of it\n");
  data::prepare_bytes({(data / "text.txt").string()}, (data / "train.h5").string());
  Config fixed = bad;
  apply_override(fixed, "model.vocab_size=257");  // the byte tokenizer's 257 ids
  REQUIRE_THROWS_WITH(run_training(bad, quiet()), Contains("vocab_size 257"));
  REQUIRE(!fs::exists(bad.run_dir()));
  REQUIRE(run_training(fixed, quiet()).final_step == 2);
}

TEST_CASE("a newest checkpoint of another model: named, set aside, and the previous one is used", "[trainer]") {
  Config c = tiny("other_model", "mamba-tiny", {"train.steps=8"});
  TrainResult r = run_training(c, quiet());
  Config other = tiny("other_model_source", "mamba-tiny", {"train.steps=4", "model.d_model=32"});
  run_training(other, quiet());
  const std::string foreign = checkpoint_path(r.run_dir, 12);
  fs::copy_file(checkpoint_path(other.run_dir(), 4), foreign);

  std::vector<std::string> messages;
  EvalResult e = evaluate(c, "", [&](const std::string& m) { messages.push_back(m); });
  REQUIRE(e.step == 8);
  REQUIRE(said(messages, "checkpoint step_00000012.h5 cannot be used (it holds another model: "
                         "backbone.embedding.weight is [32, 32] there but [32, 64] in this run's config); falling "
                         "back to step_00000008.h5"));
  REQUIRE(fs::exists(foreign));  // eval changes nothing
  REQUIRE_THROWS_WITH(evaluate(c, foreign), Contains("checkpoint '" + foreign + "' cannot be used: it holds another model"));

  messages.clear();
  TrainResult again = run_training(load_run_config(r.run_dir, {"train.steps=10"}), resuming(&messages));
  REQUIRE(again.start_step == 8);
  REQUIRE(said(messages, "step_00000012.h5 cannot be used (it holds another model"));
  REQUIRE(said(messages, "moved the unusable checkpoint step_00000012.h5 aside to step_00000012.h5.other-model"));
  REQUIRE(fs::exists(foreign + ".other-model"));
}

TEST_CASE("eval of a run whose checkpoints are all damaged is an error, not the initial weights", "[trainer]") {
  Config c = tiny("eval_damaged", "mamba-tiny", {"train.steps=4"});
  TrainResult r = run_training(c, quiet());
  for (auto& p : list_checkpoints(r.run_dir)) fs::resize_file(p, 300);
  REQUIRE_THROWS_WITH(evaluate(c), Contains("no checkpoint of " + r.run_dir + " can be used"));
  // A run that has none at all evaluates the initial weights (a baseline), saying so.
  Config fresh = tiny("eval_none", "mamba-tiny");
  std::vector<std::string> messages;
  REQUIRE(evaluate(fresh, "", [&](const std::string& m) { messages.push_back(m); }).step == 0);
  REQUIRE(said(messages, "has no checkpoint; evaluating the initial weights"));
}

TEST_CASE("train.steps on resume: a new length recomputes the schedule, and says so", "[trainer]") {
  Config c = tiny("steps_change", "mamba-tiny", {"train.steps=8", "log.every=1", "optim.min_lr=0"});
  run_training(c, quiet());
  std::vector<std::string> messages;
  run_training(load_run_config(c.run_dir(), {"train.steps=12"}), resuming(&messages));
  REQUIRE(said(messages, "train.steps changed from 8 to 12: the learning-rate schedule is recomputed for 12 steps"));
  // Step 9 runs at the 12-step cosine's rate (the 8-step schedule had ended at min_lr 0).
  Config twelve = c;
  apply_override(twelve, "train.steps=12");
  std::string metrics = test::read_text(fs::path(c.run_dir()) / "metrics.jsonl");
  size_t at = metrics.find("{\"step\":9,");
  REQUIRE(at != std::string::npos);
  double lr = std::atof(metrics.c_str() + metrics.find("\"lr\":", at) + 5);
  const double expected = 3e-3 * 0.5 * (1 + std::cos(M_PI * double(8 - 2) / double(12 - 2)));
  REQUIRE(lr == Approx(expected).epsilon(1e-9));
}

TEST_CASE("running a finished run again changes nothing", "[trainer]") {
  Config c = tiny("finished_again", "mamba-tiny", {"train.steps=4"});
  TrainResult r = run_training(c, quiet());
  const fs::path dir = r.run_dir;
  const std::string metrics = test::read_text(dir / "metrics.jsonl");
  const std::string last = list_checkpoints(r.run_dir).back();
  const auto written = fs::last_write_time(last);
  std::vector<std::string> messages;
  TrainOptions o = quiet();
  o.quiet = false;
  o.print = [&](const std::string& m) { messages.push_back(m); };
  TrainResult again = run_training(c, o);
  REQUIRE(again.final_step == 4);
  REQUIRE(again.losses.empty());
  REQUIRE(said(messages, "is finished already"));
  REQUIRE(test::read_text(dir / "metrics.jsonl") == metrics);
  REQUIRE(count_lines(dir / "metrics.jsonl", "{\"step\":4,\"tokens\":256,\"val_loss\"") == 1);
  REQUIRE(fs::last_write_time(last) == written);
}

TEST_CASE("metrics.jsonl logs mfu as null where it is unknown (the CPU)", "[trainer]") {
  Config c = tiny("mfu_null", "mamba-tiny", {"train.steps=4"});
  TrainResult r = run_training(c, quiet());
  std::string metrics = test::read_text(fs::path(r.run_dir) / "metrics.jsonl");
  REQUIRE(metrics.find("\"mfu\":null") != std::string::npos);
  REQUIRE(metrics.find("\"mfu\":-1") == std::string::npos);
}

TEST_CASE("bf16 compute on the CPU is refused before anything runs; --set train.dtype takes model.dtype along",
          "[trainer]") {
  REQUIRE_THROWS_WITH(parse_config("", "x.yaml", {"train.device=cpu", "train.dtype=bf16"}),
                      Contains("--set train.dtype=bf16: train.dtype is bf16, which needs a GPU"));
  REQUIRE_THROWS_WITH(parse_config("model: {dtype: bf16}\ntrain: {device: cpu}\n", "x.yaml"),
                      Contains("x.yaml:1: model.dtype is bf16, which needs a GPU"));
  if (!cuda_available()) {
    Config c = tiny("bf16_auto", "mamba-tiny", {"train.device=auto", "train.dtype=bf16"});
    REQUIRE_THROWS_WITH(run_training(c, quiet()), Contains("train.dtype is bf16, which needs a GPU"));
    REQUIRE(!fs::exists(c.run_dir()));
  }
  // A run's config.yaml names both dtypes; overriding one (coil eval RUN --set
  // train.dtype=bf16) is not a disagreement.
  Config run = parse_config("model: {dtype: f32}\ntrain: {dtype: f32}\n", "config.yaml", {"train.dtype=bf16"});
  REQUIRE(run.train.dtype == layers::ComputeDType::bf16);
  REQUIRE(run.model.config.dtype == layers::ComputeDType::automatic);
}

TEST_CASE("on a GPU, an f32 run evaluates in bf16 when asked", "[cuda]") {
  Config c = tiny("eval_bf16", "mamba-tiny", {"train.steps=4", "train.device=cuda", "train.dtype=f32"});
  TrainResult r = run_training(c, quiet());
  Config f32 = load_run_config(r.run_dir), bf16 = load_run_config(r.run_dir, {"train.dtype=bf16"});
  EvalResult a = evaluate(f32), b = evaluate(bf16);
  REQUIRE(a.step == 4);
  REQUIRE(b.step == 4);
  REQUIRE(b.loss == Approx(a.loss).epsilon(0.02));
  REQUIRE(b.loss != a.loss);  // it did compute in bf16
}

TEST_CASE("eval.batches all reads the whole held-out split; byte-level data reports bits per byte", "[trainer]") {
  const fs::path data = test::fresh_dir("coil_test_trainer", "eval_all_data");
  std::string text;
  for (int i = 0; i < 402; ++i) text += "line " + std::to_string(i) + " of a small byte-level corpus\n";
  test::write_text(data / "text.txt", text);
  data::prepare_bytes({(data / "text.txt").string()}, (data / "bytes.h5").string());
  Config c = tiny("eval_all", "mamba-tiny",
                  {"data.kind=tokens", "data.path=" + (data / "bytes.h5").string(), "data.val_fraction=0.1",
                   "model.vocab_size=257", "train.steps=2", "eval.batches=all"});
  TrainResult r = run_training(c, quiet());
  data::DataOptions o;
  o.kind = "tokens";
  o.path = c.data.path;
  o.val_fraction = 0.1;
  o.vocab_size = 257;
  o.seq_len = 16;
  const int64_t windows = data::DataLoader(o).num_val_batches(1);
  REQUIRE(windows % 4 != 0);  // a partial last micro-batch, read too
  EvalResult e = evaluate(c);
  REQUIRE(e.windows == windows);
  REQUIRE(e.targets == windows * 16);
  REQUIRE(e.loss == Approx(r.val_loss).epsilon(1e-9));
  REQUIRE(e.bits_per_byte == Approx(e.loss / std::log(2.0)));
  const std::string metrics = test::read_text(fs::path(r.run_dir) / "metrics.jsonl");
  REQUIRE(metrics.find("\"val_bpb\":") != std::string::npos);
  REQUIRE(to_yaml(c).find("batches: all") != std::string::npos);
  // A fixed number of batches, and other tokenizers: no bits per byte (bytes per token unknown).
  Config few = c;
  apply_override(few, "eval.batches=3");
  REQUIRE(evaluate(few).windows == 12);
  Config synthetic = tiny("eval_all_synthetic", "mamba-tiny", {"train.steps=4"});
  REQUIRE(evaluate(synthetic).bits_per_byte == -1);
  REQUIRE_THROWS_WITH(apply_override(synthetic, "eval.batches=all"), Contains("synthetic data has no end"));
}

TEST_CASE("eval, info and export", "[trainer]") {
  Config c = tiny("eval", "mamba-tiny", {"train.steps=4", "data.task=selective_copying", "data.task_vocab=8",
                                         "data.copy_tokens=4"});
  TrainResult r = run_training(c, quiet());
  EvalResult e = evaluate(c);
  REQUIRE(e.step == 4);
  REQUIRE(e.loss == Approx(r.val_loss).epsilon(1e-6));
  REQUIRE(e.accuracy >= 0);
  REQUIRE(e.perplexity == Approx(std::exp(e.loss)));

  // Export: the tied head appears under its reference name as well.
  std::string out = (fs::path(r.run_dir) / "model.safetensors").string();
  export_model(r.run_dir, "safetensors", out, "f32");
  NamedTensors st = read_safetensors(out);
  bool head = false, emb = false;
  for (auto& [n, t] : st) head |= n == "lm_head.weight", emb |= n == "backbone.embedding.weight";
  REQUIRE(head);
  REQUIRE(emb);

  // info: the parameter table computed from the config matches the built model (the Mamba
  // without selection too).
  std::vector<std::vector<std::string>> models = {{"model.preset=mamba-tiny", "model.mamba.selective=false"}};
  for (std::string preset : layers::ModelConfig::preset_names())
    if (preset.find("tiny") != std::string::npos || preset == "mamba-130m" || preset == "gpt2-124m")
      models.push_back({"model.preset=" + preset});
  for (auto sets : models) {
    INFO(sets.back());
    sets.push_back("train.seq_len=128");
    Config p = parse_config("", "p.yaml", sets);
    layers::LanguageModel m(p.model.config, 0);
    ModelInfo info = model_info(p);
    REQUIRE(info.parameters == m.num_parameters());
    REQUIRE(info.non_embedding_parameters == m.num_parameters(false));
    REQUIRE(info.matmul_parameters == m.matmul_parameters());
    REQUIRE(info.flops_per_token == Approx(m.flops_per_token(128)));
    std::map<std::string, Shape> built;
    for (auto& [n, prm] : m.named_parameters()) built[n] = prm->shape();
    auto shapes = layers::parameter_shapes(p.model.config);
    REQUIRE(shapes.size() == built.size());
    for (auto& [n, s] : shapes) REQUIRE(built[n] == s);
  }
  Config m130 = parse_config("", "m.yaml", {"model.preset=mamba-130m"});
  REQUIRE(model_info(m130).parameters == 129135360);
  REQUIRE_THAT(format_info(m130, model_info(m130)), Contains("parameters   129135360"));
}

TEST_CASE("on a GPU, a token id outside the vocabulary stops training with an error naming it", "[cuda]") {
  // The GPU kernels record a bad id instead of syncing; the trainer raises it at the step's
  // one sync (or the next embedding call). A file that claims 32 ids but holds 1000:
  fs::path dir = fs::temp_directory_path() / "coil_test_trainer_bad_ids_data";  // not the run dir
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string path = (dir / "bad.h5").string();
  {
    data::TokenWriter w(path, 32, "test", -1);
    w.append(std::vector<uint32_t>(4000, 7));
    w.close();
    h5::Handle f = h5::open_file(path, true);
    h5::Handle d = h5::open_dataset(f, "tokens", path);
    std::vector<uint32_t> bad(4000, 1000);
    REQUIRE(H5Dwrite(d, H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, bad.data()) >= 0);
  }
  Config c = tiny("bad_ids", "mamba-tiny",
                  {"data.kind=tokens", "data.path=" + path, "data.check_ids=false", "train.device=cuda"});
  REQUIRE_THROWS_WITH(run_training(c, quiet()), Contains("1000"));  // the embedding or the loss names it
}
