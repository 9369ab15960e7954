// The run configuration: one YAML file with the sections run, model, data, train, optim, eval,
// checkpoint and log (docs/CONFIG.md lists every key with its type, default and range).
//
//   Config c = load_config("configs/default.yaml", {"train.steps=100", "optim.lr=1e-3"});
//   std::string text = to_yaml(c);          // the resolved config; parses back to the same c
//
// Unknown keys, wrong types and out-of-range values are errors that name the file, the line
// and the key path ("configs/x.yaml:12: train.seq_len: expected an integer, got 'abc'").
// `--set key.path=value` overrides take a YAML scalar (or flow sequence) as the value and are
// checked exactly like the file.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/device.h"
#include "layers/model_config.h"
#include "optim/defaults.h"

namespace coil::train {

struct RunSection {
  std::string name = "default";
  std::string dir;  // empty: runs/<name>
};

// The model: a preset (layers/model_config.h) plus overrides of any of its fields.
struct ModelSection {
  std::string preset = "mamba-tiny";  // empty: start from ModelConfig's defaults
  layers::ModelConfig config = layers::ModelConfig::preset("mamba-tiny");  // preset + overrides
  // Weights a new run starts from (train/hf_interop.h): a coil checkpoint, a run directory or a
  // Hugging Face / mamba_ssm model directory, whose model must be this one. Empty: initialize.
  std::string init_from;
};

struct DataSection {
  std::string kind = "synthetic";        // synthetic | tokens
  std::string task = "selective_copying";  // synthetic: selective_copying | induction_heads | random
  std::string path;                      // tokens: a glob of HDF5 token files
  std::string val_path;                  // tokens: a glob of validation files (empty: split off)
  double val_fraction = 0.01;            // tokens: the last fraction of each file is held out
  int64_t task_vocab = 16;               // synthetic: distinct data tokens
  int64_t copy_tokens = 16;              // selective_copying: tokens to remember
  bool check_ids = true;                 // tokens: check every id against the model's vocabulary
  bool reset_at_eot = false;             // tokens: documents do not see each other (docs/MODELS.md)
  std::string sampler = "random";        // tokens: random | shuffled | sequential (data/loader.h)
};

struct TrainSection {
  int64_t seq_len = 256;
  int64_t micro_batch = 8;
  int64_t tokens_per_step = 0;  // 0: one micro-batch per rank (no accumulation)
  int64_t steps = 1000;
  layers::ComputeDType dtype = layers::ComputeDType::automatic;  // auto (bf16 on GPU, f32 on CPU) | bf16 | f32
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  int64_t seed = 0;
  bool deterministic = false;   // deterministic kernels where there is a choice
  int64_t max_nan_skips = 10;   // non-finite losses tolerated (each skips its step)
  double dist_timeout_s = 300;  // several ranks: rendezvous and collective waits give up after this
  double bucket_mb = 25;        // several ranks: gradient bucket size (docs/DISTRIBUTED.md)
  int64_t zero = 0;             // several ranks: 1 = ZeRO-1, AdamW's moments sharded over them
  bool carry_state = false;     // Mamba states carried from window to window (docs/MODELS.md)
};

struct OptimSection {
  double lr = optim::kDefaultLr;
  std::vector<double> betas = {optim::kDefaultBeta1, optim::kDefaultBeta2};
  double weight_decay = 0.1;
  double eps = optim::kDefaultEps;
  double grad_clip = 1.0;  // 0: no clipping
  std::string schedule = "cosine";  // cosine | constant | linear
  double warmup = 0.1;     // < 1: a fraction of the steps; >= 1: a number of steps
  double min_lr = 1e-5;
};

struct EvalSection {
  static constexpr int64_t kAll = -1;  // eval.batches: all (the whole held-out split)
  int64_t every = 100;  // 0: only at the end
  int64_t batches = 8;  // micro-batches of held-out data, the same ones at every evaluation; kAll
};

struct CheckpointSection {
  int64_t every = 500;  // 0: only at the end
  int64_t keep_last = 3;
  bool at_end = true;   // also after the last step (benchmarks turn it off)
};

struct LogSection {
  int64_t every = 10;
  bool tensorboard = false;  // also write a TensorBoard event file into the run directory
};

struct Config {
  RunSection run;
  ModelSection model;
  DataSection data;
  TrainSection train;
  OptimSection optim;
  EvalSection eval;
  CheckpointSection checkpoint;
  LogSection log;

  std::string source;  // the file it came from (not serialized)

  std::string run_dir() const;
  // tokens_per_step / (micro_batch * seq_len * world); an error if it does not divide.
  int64_t grad_accum(int world_size = 1) const;
  // Warmup in steps (the fraction resolved against train.steps).
  int64_t warmup_steps() const;
};

// Parses a YAML text; `source` names it in errors ("configs/x.yaml").
Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides = {});
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Reads a run directory's config.yaml.
Config load_run_config(const std::string& run_dir, const std::vector<std::string>& overrides = {});
// Applies one "key.path=value" override.
void apply_override(Config& config, const std::string& assignment);

// The whole config, every key written out, sections in their usual order.
std::string to_yaml(const Config& config);

// Differences between two configs as "key: a -> b" lines (empty if the same). Keys that a run
// may change when it continues (run.name, run.dir, train.steps, train.device,
// train.max_nan_skips, train.dist_timeout_s, train.bucket_mb, train.zero, eval, checkpoint,
// log) are
// skipped when `only_computation` is set. train.steps among them is part of the schedule: a
// new value recomputes the schedule for the new length (docs/CONFIG.md).
std::vector<std::string> config_differences(const Config& a, const Config& b, bool only_computation = false);

// bf16 compute needs a GPU (the CPU computes in f32 and f64): the key, train.dtype or
// model.dtype, that asks for bf16, or "" when neither does. Configs check it for train.device
// cpu; the trainer once train.device auto has chosen the CPU.
std::string bf16_dtype_key(const Config& config);

// ---- the config as a run executes it ----
// The device `name` names (auto: the first GPU when one is usable, else the CPU); an error,
// naming `key`, when it names a GPU and none is usable.
Device resolve_device(const std::string& name, const std::string& key = "train.device");
// Resolves train.device and the dtypes for `device` (several ranks: "cuda", each rank on the
// GPU of its local rank) and checks what that device cannot run: bf16 on the CPU, and on a GPU
// the CUDA kernels' limits (ModelConfig::check_cuda_limits).
void resolve_for_device(Config& config, Device device, int world_size = 1);

// Every key path with its default, for --help and docs.
std::vector<std::pair<std::string, std::string>> config_keys();

}  // namespace coil::train
