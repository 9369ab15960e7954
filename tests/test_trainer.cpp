#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "core/version.h"
#include "data/hdf5_util.h"
#include "data/token_file.h"
#include "layers/model.h"
#include "tests/catch.h"
#include "train/checkpoint.h"
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
  export_safetensors(r.run_dir, out, "f32");
  NamedTensors st = read_safetensors(out);
  bool head = false, emb = false;
  for (auto& [n, t] : st) head |= n == "lm_head.weight", emb |= n == "backbone.embedding.weight";
  REQUIRE(head);
  REQUIRE(emb);

  // info: the parameter table computed from the config matches the built model.
  for (std::string preset : layers::ModelConfig::preset_names()) {
    if (preset.find("tiny") == std::string::npos && preset != "mamba-130m" && preset != "gpt2-124m") continue;
    INFO(preset);
    Config p = parse_config("", "p.yaml", {"model.preset=" + preset, "train.seq_len=128"});
    layers::LanguageModel m(p.model.config, 0);
    ModelInfo info = model_info(p);
    REQUIRE(info.parameters == m.num_parameters());
    REQUIRE(info.non_embedding_parameters == m.num_parameters(false));
    REQUIRE(info.matmul_parameters == m.matmul_parameters());
    REQUIRE(info.flops_per_token == Approx(m.flops_per_token(128)));
    std::map<std::string, Shape> built;
    for (auto& [n, prm] : m.named_parameters()) built[n] = prm->shape();
    auto shapes = parameter_shapes(p.model.config);
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
