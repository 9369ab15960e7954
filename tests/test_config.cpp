#include <filesystem>
#include <fstream>

#include "tests/catch.h"
#include "train/config.h"

using namespace coil::train;
using Catch::Matchers::Contains;

namespace {
Config parse(const std::string& text, const std::vector<std::string>& overrides = {}) {
  return parse_config(text, "test.yaml", overrides);
}
std::string error_of(const std::string& text, const std::vector<std::string>& overrides = {}) {
  try {
    parse(text, overrides);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST_CASE("an empty config gives the defaults", "[config]") {
  Config c = parse("");
  REQUIRE(c.model.preset == "mamba-tiny");
  REQUIRE(c.model.config.d_model == coil::layers::ModelConfig::preset("mamba-tiny").d_model);
  REQUIRE(c.data.kind == "synthetic");
  REQUIRE(c.optim.betas == std::vector<double>{0.9, 0.95});
  REQUIRE(c.optim.weight_decay == 0.1);
  REQUIRE(c.optim.grad_clip == 1.0);
  REQUIRE(c.optim.min_lr == 1e-5);
  REQUIRE(c.run_dir() == "runs/default");
  REQUIRE(c.grad_accum() == 1);
}

TEST_CASE("a config for a GPU meets the CUDA kernels' limits when it loads", "[config]") {
  // d_state above the selective scan's limit: the key, where it was set, and the limit.
  REQUIRE_THAT(error_of("model: {preset: mamba-tiny}\ntrain: {device: cuda}\n", {"model.mamba.d_state=128"}),
               Contains("--set model.mamba.d_state=128: model config: model.mamba.d_state is 128, but the CUDA "
                        "selective scan takes d_state up to 64"));
  // A head dim the attention kernels are not built for (160 / 2 = 80), named with its line.
  REQUIRE_THAT(error_of("model:\n  preset: transformer++-tiny\n  d_model: 160\ntrain: {device: 'cuda:0'}\n"),
               Contains("test.yaml:3: model config: the head dim model.d_model / model.attention.n_head = 160 / 2 = 80 "
                        "is not one the CUDA attention kernels take (64, 96 and 128)"));
  // The CPU has neither limit; a Transformer has no scan and a Mamba no attention.
  REQUIRE(parse("train: {device: cpu}\n", {"model.mamba.d_state=128"}).model.config.mamba.d_state == 128);
  REQUIRE(parse("model: {preset: transformer++-tiny, d_model: 160}\ntrain: {device: cpu}\n").model.config.d_model == 160);
  REQUIRE(parse("model: {preset: transformer++-tiny}\ntrain: {device: cuda}\n", {"model.mamba.d_state=128"})
              .model.config.mamba.d_state == 128);
  REQUIRE(parse("model: {preset: mamba-tiny, d_model: 160}\ntrain: {device: cuda}\n").model.config.d_model == 160);
}

TEST_CASE("a config file sets keys of every section; the preset comes first", "[config]") {
  Config c = parse(R"(
run: {name: toy}
model:
  d_model: 128          # applies after the preset, whatever the order in the file
  preset: transformer++-tiny
  attention: {n_head: 8}
data: {kind: synthetic, task: induction_heads}
train: {seq_len: 64, micro_batch: 4, tokens_per_step: 1024, steps: 50, seed: 3, device: cpu}
optim: {lr: 1e-3, betas: [0.8, 0.99], warmup: 5, schedule: constant}
eval: {every: 10, batches: 2}
checkpoint: {every: 25, keep_last: 2}
log: {every: 5, tensorboard: true}
)");
  REQUIRE(c.model.config.mixer == coil::layers::MixerKind::attention);
  REQUIRE(c.model.config.d_model == 128);
  REQUIRE(c.model.config.attention.n_head == 8);
  REQUIRE(c.model.config.name == "transformer++-tiny");
  REQUIRE(c.data.task == "induction_heads");
  REQUIRE(c.grad_accum() == 4);
  REQUIRE(c.grad_accum(2) == 2);
  REQUIRE(c.warmup_steps() == 5);
  REQUIRE(c.optim.betas == std::vector<double>{0.8, 0.99});
  REQUIRE(c.log.tensorboard);
  REQUIRE(c.run_dir() == "runs/toy");
}

TEST_CASE("config errors name the key path and the line", "[config]") {
  REQUIRE_THAT(error_of("train:\n  seq_len: 64\n  sq_len: 3\n"),
               Contains("test.yaml:3: unknown key 'train.sq_len' (did you mean 'train.seq_len'?)"));
  REQUIRE_THAT(error_of("train:\n  seq_len: abc\n"),
               Contains("test.yaml:2: train.seq_len: expected an integer, got 'abc'"));
  REQUIRE_THAT(error_of("optim:\n  lr: 0.001\n  betas: [0.9]\n"), Contains("test.yaml:3: optim.betas: expected"));
  REQUIRE_THAT(error_of("\n\noptim:\n  betas: [0.9, 1.5]\n"), Contains("test.yaml:4: optim.betas[1]: must be in [0, 1)"));
  REQUIRE_THAT(error_of("train:\n  micro_batch: 0\n"), Contains("test.yaml:2: train.micro_batch: must be >= 1, got 0"));
  REQUIRE_THAT(error_of("trian:\n  steps: 3\n"), Contains("test.yaml:1: unknown section 'trian'"));
  REQUIRE_THAT(error_of("train:\n  dtype: fp16\n"), Contains("test.yaml:2: train.dtype: must be one of auto, bf16, f32"));
  // The model's choices are parsed once, by the names of their enums (layers/model_config.h).
  REQUIRE_THAT(error_of("train:\n  dtype: f64\n"), Contains("test.yaml:2: train.dtype: must be one of auto, bf16, f32, got 'f64'"));
  REQUIRE_THAT(error_of("model: {mlp: relu}\n"), Contains("test.yaml:1: model.mlp: must be one of none, swiglu, gelu, got 'relu'"));
  REQUIRE_THAT(error_of("model: {dtype: fp8}\n"), Contains("model.dtype: must be one of auto, f32, bf16, f64, got 'fp8'"));
  REQUIRE_THAT(error_of("model:\n  attention: {positions: absolute}\n"),
               Contains("test.yaml:2: model.attention.positions: must be one of rope, learned, sinusoidal, none, got "
                        "'absolute'"));
  REQUIRE_THAT(error_of("", {"model.layers=[mamba, mlp]"}),
               Contains("--set model.layers=[mamba, mlp]: model.layers[1]: must be one of mamba, attention, got 'mlp'"));
  REQUIRE_THAT(error_of("log:\n  tensorboard: maybe\n"), Contains("test.yaml:2: log.tensorboard: expected true or false"));
  REQUIRE_THAT(error_of("model:\n  mamba:\n    d_stat: 4\n"), Contains("test.yaml:3: unknown key 'model.mamba.d_stat'"));
  REQUIRE_THAT(error_of("model:\n  preset: mamba-9t\n"), Contains("test.yaml:2: model config: unknown model.preset"));
  REQUIRE_THAT(error_of("train: 5\n"), Contains("test.yaml:1: train: a section is a map"));
  REQUIRE_THAT(error_of("train: {seq_len: 10, seq_len: 12}\n"), Contains("appears twice"));
  REQUIRE_THAT(error_of("train: {seq_len: [1, 2\n"), Contains("not valid YAML"));
  // Cross-key checks point at the line of the key involved.
  REQUIRE_THAT(error_of("train:\n  seq_len: 64\n  micro_batch: 4\n  tokens_per_step: 1000\n"),
               Contains("test.yaml:4: train.tokens_per_step (1000) must be a multiple of"));
  REQUIRE_THAT(error_of("model:\n  preset: transformer++-tiny\n  attention:\n    n_head: 3\n"),
               Contains("test.yaml:4: model config: model.d_model (") && Contains("is not divisible by model.attention.n_head (3)"));
  REQUIRE_THAT(error_of("data:\n  kind: tokens\n"), Contains("data.path: data.kind is tokens but no token files"));
  REQUIRE_THAT(error_of("train: {steps: 10}\noptim:\n  warmup: 20\n"), Contains("test.yaml:3: optim.warmup (20 steps)"));
  REQUIRE_THAT(error_of("optim:\n  lr: 1e-3\n  min_lr: 1e-2\n"), Contains("test.yaml:3: optim.min_lr"));
}

TEST_CASE("--set overrides are typed and checked like the file", "[config]") {
  Config c = parse("train: {steps: 10}\n", {"train.steps=20", "optim.lr=3e-4", "optim.betas=[0.9, 0.99]",
                                            "model.mamba.d_state=4", "run.name=x", "log.tensorboard=true"});
  REQUIRE(c.train.steps == 20);
  REQUIRE(c.optim.lr == 3e-4);
  REQUIRE(c.optim.betas[1] == 0.99);
  REQUIRE(c.model.config.mamba.d_state == 4);
  REQUIRE(c.run.name == "x");
  REQUIRE(c.log.tensorboard);
  // A preset given with --set replaces the file's preset but keeps the file's model keys.
  Config d = parse("model: {preset: mamba-tiny, d_model: 96}\n", {"model.preset=transformer++-tiny"});
  REQUIRE(d.model.config.mixer == coil::layers::MixerKind::attention);
  REQUIRE(d.model.config.d_model == 96);
  REQUIRE_THAT(error_of("", {"train.steps=abc"}), Contains("--set train.steps=abc: train.steps: expected an integer"));
  REQUIRE_THAT(error_of("", {"train.stpes=3"}), Contains("--set train.stpes=3: unknown key 'train.stpes'"));
  REQUIRE_THAT(error_of("", {"train.steps"}), Contains("expected key.path=value"));
  REQUIRE_THAT(error_of("", {"optim.lr=-1"}), Contains("--set optim.lr=-1: optim.lr: must be a number in (0, 10]"));
  Config e = parse("");
  apply_override(e, "train.seed=7");
  REQUIRE(e.train.seed == 7);
}

TEST_CASE("the resolved config round-trips through YAML", "[config]") {
  Config c = parse("model: {preset: hybrid-tiny, d_model: 96}\noptim: {lr: 0.0003, eps: 1e-9}\ndata: {path: 'data/*.h5', kind: tokens}\n",
                   {"model.layers=[mamba, attention, attention, mamba]", "run.dir=/tmp/x y"});
  std::string text = to_yaml(c);
  Config d = parse_config(text, "resolved.yaml");
  REQUIRE(config_differences(c, d).empty());
  REQUIRE(to_yaml(d) == text);
  using coil::layers::MixerKind;
  REQUIRE(d.model.config.layers ==
          std::vector<MixerKind>{MixerKind::mamba, MixerKind::attention, MixerKind::attention, MixerKind::mamba});
  REQUIRE(d.data.path == "data/*.h5");
  REQUIRE(d.run.dir == "/tmp/x y");
  REQUIRE(d.optim.eps == 1e-9);
  // Every default round-trips too, including a model with no preset.
  Config e = parse("model: {preset: ''}\n");
  REQUIRE(config_differences(e, parse_config(to_yaml(e), "r.yaml")).empty());
  // Differences are listed per key; bookkeeping keys can be ignored.
  Config f = parse("", {"train.steps=5", "optim.lr=1e-3", "optim.warmup=0"});
  Config g = parse("", {"train.steps=9", "optim.lr=1e-3", "optim.warmup=0"});
  REQUIRE(config_differences(f, g).size() == 1);
  REQUIRE(config_differences(f, g, true).empty());
}

TEST_CASE("every config under configs/ parses", "[config]") {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(__FILE__).parent_path().parent_path() / "configs";
  if (!fs::exists(dir)) return;
  int n = 0;
  for (auto& entry : fs::recursive_directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    // Sweep files (scaling/sweep.h) expand into configs; they are not configs themselves.
    std::ifstream in(entry.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (text.find("\naxes:") != std::string::npos || text.rfind("axes:", 0) == 0) continue;
    INFO(entry.path().string());
    REQUIRE_NOTHROW(load_config(entry.path().string()));
    ++n;
  }
  REQUIRE(n >= 0);
}

TEST_CASE("eval.batches is a count or all; all needs token files", "[config]") {
  REQUIRE(parse("eval: {batches: all}\ndata: {kind: tokens, path: x.h5}\n").eval.batches == EvalSection::kAll);
  Config c = parse("data: {kind: tokens, path: x.h5}\n", {"eval.batches=all"});
  REQUIRE(parse_config(to_yaml(c), "r.yaml").eval.batches == EvalSection::kAll);
  REQUIRE(parse("", {"eval.batches=0"}).eval.batches == 0);
  REQUIRE_THAT(error_of("", {"eval.batches=-3"}), Contains("--set eval.batches=-3: eval.batches: must be >= 0, got -3"));
  REQUIRE_THAT(error_of("eval: {batches: many}\n"), Contains("test.yaml:1: eval.batches: expected an integer, got 'many'"));
  REQUIRE_THAT(error_of("eval: {batches: all}\n"), Contains("test.yaml:1: eval.batches: all is the whole held-out split"));
}

TEST_CASE("data.sampler is random, shuffled or sequential; the ordered ones need token files", "[config]") {
  REQUIRE(parse("").data.sampler == "random");
  Config c = parse("data: {kind: tokens, path: x.h5, sampler: shuffled}\n");
  REQUIRE(c.data.sampler == "shuffled");
  REQUIRE(parse_config(to_yaml(c), "r.yaml").data.sampler == "shuffled");
  REQUIRE_THAT(error_of("data: {sampler: sorted}\n"), Contains("test.yaml:1: data.sampler"));
  REQUIRE_THAT(error_of("data: {sampler: shuffled}\n"),
               Contains("test.yaml:1: data.sampler: shuffled orders the windows of a token stream"));
}

TEST_CASE("a continuing run may raise train.max_nan_skips; the number of ranks is at least 1", "[config]") {
  Config a = parse("", {"train.max_nan_skips=2"}), b = parse("", {"train.max_nan_skips=50"});
  REQUIRE(config_differences(a, b).size() == 1);
  REQUIRE(config_differences(a, b, true).empty());
  REQUIRE_THROWS_WITH(a.grad_accum(0), Contains("the number of ranks must be at least 1, got 0"));
  REQUIRE_THROWS_WITH(a.grad_accum(-2), Contains("got -2"));
}

TEST_CASE("a directory is not a config file; a run directory points to coil resume", "[config]") {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / "coil_test_config_dir";
  fs::remove_all(dir);
  fs::create_directories(dir);
  REQUIRE_THROWS_WITH(load_config(dir.string()), Contains("'" + dir.string() + "' is a directory, not a config file"));
  std::ofstream(dir / "config.yaml") << "train: {steps: 5}\n";
  REQUIRE_THROWS_WITH(load_config(dir.string()),
                      Contains("is a run directory, not a config file: to continue its run, coil resume " + dir.string()));
}
