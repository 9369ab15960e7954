// The `coil` command line: train, resume, eval, prepare, info, export, launch, sweep, report.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <map>
#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/version.h"
#include "data/prepare.h"
#include "data/sentencepiece_tokenizer.h"
#include "kernels/cpu/parallel.h"
#include "kernels/matmul.h"
#include "train/config.h"
#include "train/launch.h"
#include "train/report.h"
#include "train/sweep.h"
#include "train/sweep_runner.h"
#include "train/trainer.h"

using namespace coil;
using namespace coil::train;
namespace fs = std::filesystem;

namespace {

const char* kUsage = R"(coil: train Mamba and Transformer language models

usage: coil COMMAND [ARGS] [--help]
       coil --version

commands:
  train CONFIG [--set key=value ...]    train the run a YAML config describes
  resume RUN_DIR [--set key=value ...]  continue a run from its latest good checkpoint
  eval CONFIG|RUN_DIR [--checkpoint F]  held-out loss, perplexity (and accuracy) of a checkpoint
  prepare --out FILE.h5 TEXT ...        text files to a token file (byte-level or SentencePiece)
  info CONFIG [--set key=value ...]     parameters, FLOPs per token, memory estimate
  export CHECKPOINT|RUN_DIR --format safetensors [--out F] [--dtype f32|bf16]
  launch --nproc N -- COMMAND ...       run N local ranks (data parallel)
  sweep SWEEP.yaml [--print]            run a grid of runs (skips finished, resumes interrupted)
  report RUNS ... --out DIR             scaling table, power-law fits and plots of runs
  keys                                  every config key with its default and range

`coil COMMAND --help` describes one command. docs/CONFIG.md documents the config keys,
docs/SCALING.md sweeps and reports.
)";

const char* kTrainHelp = R"(usage: coil train CONFIG [--set key.path=value ...] [--stop-after N]

Trains the run that CONFIG describes into its run directory (run.dir, default runs/<run.name>):
config.yaml (the resolved config), metrics.jsonl, checkpoints/step_*.h5.
  --set key.path=value   override any config key, checked like the file (repeatable),
                         e.g. --set train.steps=100 --set optim.lr=1e-3
  --stop-after N         stop after N steps of this call, saving a checkpoint (to split a run
                         over time-limited jobs: the same command continues it)
If the run directory already holds the same run, training continues from its latest
checkpoint; if it holds a different run, this is an error listing the differences.
Ctrl-C (or SIGTERM) saves a checkpoint at the next step boundary and stops; a second one
exits at once. Exit status: 0 done, 1 error, 128+signal when interrupted (after saving).
)";

const char* kResumeHelp = R"(usage: coil resume RUN_DIR [--set key.path=value ...]

Continues the run in RUN_DIR from its newest checkpoint that verifies (a damaged newest one
is reported and the previous one used). The run's config.yaml is used; --set may change
bookkeeping keys (train.steps, eval.*, checkpoint.*, log.*) but not what is computed.
)";

const char* kEvalHelp = R"(usage: coil eval CONFIG|RUN_DIR [--checkpoint FILE] [--batches N] [--set k=v ...]

Evaluates a checkpoint (default: the run's newest good one) on the fixed held-out batches:
loss, perplexity and, for the synthetic copying and induction tasks, accuracy on the answer
positions.
)";

const char* kPrepareHelp = R"(usage: coil prepare --out FILE.h5 [--lines | --paragraphs] TEXT [TEXT ...]
       coil prepare --tokenizer sentencepiece --vocab-size N [--sp-type bpe|unigram] --out FILE.h5 TEXT ...
       coil prepare --sp-model FILE.model --out FILE.h5 TEXT ...

Tokenizes text files (paths or globs, '-' for stdin) into an HDF5 token file (docs/FORMATS.md).
Each input file is one document, or each line (--lines), or each blank-line separated
paragraph (--paragraphs); the end-of-text token follows each document.
  --tokenizer byte         the default: ids 0-255 are bytes, end-of-text 256, vocab_size 257
  --tokenizer sentencepiece --vocab-size N
                           trains a SentencePiece model of N pieces (BPE, or --sp-type unigram)
                           on the inputs, saves it beside the output (FILE.model), encodes the
                           inputs with it (lossless: byte fallback, whitespace kept; id 0 <unk>,
                           1 end-of-text)
  --sp-model FILE.model    encodes with an existing model instead (validation files: the same
                           tokenizer as the training files)
The token file records the tokenizer (its name, and the SentencePiece model itself).
SentencePiece needs libsentencepiece-dev at build time. For Hugging Face tokenizers use
scripts/prepare_hf.py, which writes the same format.
)";

const char* kInfoHelp = R"(usage: coil info CONFIG [--set key.path=value ...] [--world N]

Prints the model's parameter count (with and without embeddings), training FLOPs per token and
per step, and an estimate of the GPU memory of one rank (weights, gradients, AdamW moments,
activations of one micro-batch). The model is not built, so any size answers at once.
)";

const char* kExportHelp = R"(usage: coil export CHECKPOINT|RUN_DIR --format safetensors [--out FILE] [--dtype f32|bf16]

Writes a checkpoint's parameters under the reference names (backbone.embedding.weight,
backbone.layers.{i}.mixer.in_proj.weight, ..., lm_head.weight for the tied head too) as a
safetensors file (default: next to the checkpoint, .safetensors), loadable with
safetensors.torch.load_file and into mamba_ssm's MambaLMHeadModel.
)";

const char* kSweepHelp = R"(usage: coil sweep SWEEP.yaml [--print] [--time-limit SECONDS]

Expands the grid of SWEEP.yaml (base config, out_dir, shared `set:` overrides, `axes:`; see
docs/SCALING.md) into ordinary runs, out_dir/<name> each, and trains them one after another,
each as `coil train BASE --set ...` in a child process. Every run's config is checked first.
A run that has finished is skipped, an interrupted one resumes from its latest checkpoint, a
failed one is reported and the others still run: run the same command again to continue.
  --print                print the command of each run, one a line, and run nothing (for a
                         cluster scheduler to run them in parallel)
  --time-limit SECONDS   stop once this long has passed: the running run saves a checkpoint at
                         its next step and no further run starts
Ctrl-C (or SIGTERM) does the same at once. Exit status: 0 every run finished, 1 a run failed,
3 the time limit stopped the sweep, 128+signal when interrupted.
)";

const char* kReportHelp = R"(usage: coil report RUNS ... --out DIR [--with-constant] [--no-plots]

RUNS are run directories, a sweep's output directory (its runs) or a sweep file (every run
it names, started or not). Writes DIR/report.md and DIR/runs.csv (architecture, size,
parameters, tokens, training FLOPs, final validation loss, wall time, tokens/s, status of
every run: finished, interrupted, corrupt or missing), curves.csv, fits.csv, and a power-law
fit loss = a * FLOPs^(-b) per architecture over its finished runs; with python3-matplotlib
also loss_vs_flops.png and loss_curves.png (scripts/plot_scaling.py).
  --with-constant   fit loss = a * FLOPs^(-b) + c
  --no-plots        skip the PNG plots
)";

const char* kLaunchHelp = R"(usage: coil launch --nproc N [--port P] -- COMMAND [ARGS ...]

Starts N local copies of coil with torchrun's variables set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and waits; if one fails, the others are stopped. See docs/DISTRIBUTED.md.
)";

struct Args {
  std::vector<std::string> positional;
  std::vector<std::string> sets;
  std::map<std::string, std::string> options;
  std::vector<std::string> flags;
  bool help = false;
};

// Options taking a value; everything else starting with -- is a flag.
Args parse_args(int argc, char** argv, int start, const std::vector<std::string>& valued,
                const std::vector<std::string>& flags) {
  Args a;
  for (int i = start; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--help" || s == "-h") {
      a.help = true;
    } else if (s == "--set") {
      if (i + 1 >= argc) fail("--set needs key.path=value");
      a.sets.push_back(argv[++i]);
    } else if (s.rfind("--set=", 0) == 0) {
      a.sets.push_back(s.substr(6));
    } else if (s.rfind("--", 0) == 0 && s.size() > 2) {
      std::string key = s.substr(2), value;
      auto eq = key.find('=');
      if (eq != std::string::npos) value = key.substr(eq + 1), key = key.substr(0, eq);
      if (std::find(valued.begin(), valued.end(), key) != valued.end()) {
        if (eq == std::string::npos) {
          if (i + 1 >= argc) fail("--{} needs a value", key);
          value = argv[++i];
        }
        a.options[key] = value;
      } else if (std::find(flags.begin(), flags.end(), key) != flags.end()) {
        a.flags.push_back(key);
      } else {
        fail("unknown option '{}' (see --help)", s);
      }
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

bool has_flag(const Args& a, const std::string& f) { return std::find(a.flags.begin(), a.flags.end(), f) != a.flags.end(); }

int help(const char* text) {
  std::fputs(text, stdout);
  return 0;
}

// The version and what this build can use.
int print_version() {
  std::vector<std::string> with;
#ifdef COIL_CUDA
  with.push_back("CUDA");
#endif
#ifdef COIL_NCCL
  with.push_back("NCCL");
#endif
  if (!kernels::cpu::blas_name().empty()) with.push_back(kernels::cpu::blas_name());
#ifdef COIL_SENTENCEPIECE
  with.push_back("SentencePiece");
#endif
  std::string features;
  for (auto& f : with) features += (features.empty() ? "" : ", ") + f;
  std::printf("coil %s\nbuilt with: %s; CPU threads: %d\n", version_string().c_str(),
              features.empty() ? "no optional libraries" : features.c_str(), kernels::cpu::num_threads());
  return 0;
}

// A whole number (integer) or a positive number of seconds given to an option.
double parse_number(const std::string& text, const char* option, bool integer) {
  size_t used = 0;
  double v = -1;
  try {
    v = integer ? double(std::stoll(text, &used)) : std::stod(text, &used);
  } catch (const std::exception&) {
  }
  if (used != text.size() || !(integer ? v >= 0 : v > 0))
    fail("{} expects {}, got '{}'", option, integer ? "a non-negative integer" : "a positive number of seconds", text);
  return v;
}

int64_t parse_count(const std::string& text, const char* option) { return int64_t(parse_number(text, option, true)); }

void need(const Args& a, size_t n, const char* usage) {
  if (a.positional.size() != n) fail("{}", std::string(usage).substr(0, std::string(usage).find('\n')));
}

int cmd_train(int argc, char** argv, bool resume) {
  Args a = parse_args(argc, argv, 2, {"stop-after"}, {});
  if (a.help) return help(resume ? kResumeHelp : kTrainHelp);
  need(a, 1, resume ? kResumeHelp : kTrainHelp);
  Config config = resume ? load_run_config(a.positional[0], a.sets) : load_config(a.positional[0], a.sets);
  if (resume) {
    // The run directory is where the config was found, even if it was moved.
    config.run.dir = a.positional[0];
  }
  TrainOptions o;
  o.resume = resume;
  if (a.options.count("stop-after")) o.stop_after_steps = parse_count(a.options["stop-after"], "--stop-after");
  TrainResult r = run_training(config, o);
  if (r.interrupted && r.signal) return 128 + r.signal;
  return 0;
}

int cmd_eval(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"checkpoint", "batches"}, {});
  if (a.help) return help(kEvalHelp);
  need(a, 1, kEvalHelp);
  std::string src = a.positional[0];
  Config config;
  if (fs::is_directory(src)) {
    config = load_run_config(src, a.sets);
    config.run.dir = src;
  } else {
    config = load_config(src, a.sets);
  }
  int64_t batches = a.options.count("batches") ? std::stoll(a.options["batches"]) : 0;
  auto print = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  EvalResult r = evaluate(config, a.options.count("checkpoint") ? a.options["checkpoint"] : "", batches, print);
  std::printf("checkpoint  %s (step %lld)\n", r.checkpoint.empty() ? "(initial weights)" : r.checkpoint.c_str(),
              (long long)r.step);
  std::printf("batches     %lld (%lld targets)\n", (long long)r.batches, (long long)r.targets);
  std::printf("loss        %.6f\nperplexity  %.4f\n", r.loss, r.perplexity);
  if (r.accuracy >= 0) std::printf("accuracy    %.2f%%\n", 100 * r.accuracy);
  return 0;
}

int cmd_prepare(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"out", "tokenizer", "vocab-size", "sp-model", "sp-type"}, {"lines", "paragraphs"});
  if (a.help) return help(kPrepareHelp);
  if (!a.options.count("out") || a.positional.empty()) fail("usage: coil prepare --out FILE.h5 TEXT [TEXT ...]");
  const std::string out = a.options["out"];
  data::PrepareOptions docs;
  docs.lines_are_documents = has_flag(a, "lines");
  docs.paragraphs_are_documents = has_flag(a, "paragraphs");
  std::string tokenizer = a.options.count("tokenizer") ? a.options["tokenizer"]
                          : a.options.count("sp-model") ? "sentencepiece"
                                                        : "byte";
  if (tokenizer == "byte") {
    for (const char* k : {"vocab-size", "sp-model", "sp-type"})
      if (a.options.count(k)) fail("prepare: --{} is for --tokenizer sentencepiece; the byte tokenizer has 257 ids", k);
    auto s = data::prepare_bytes(a.positional, out, docs);
    std::printf("wrote %s: %lld tokens, %lld documents from %lld files (byte-level, vocab_size %lld, eot %lld)\n",
                out.c_str(), (long long)s.tokens, (long long)s.documents, (long long)s.files,
                (long long)data::kByteVocab, (long long)data::kByteEot);
    return 0;
  }
  if (tokenizer != "sentencepiece") fail("prepare: --tokenizer must be byte or sentencepiece, got '{}'", tokenizer);
  data::SentencePieceOptions o;
  o.documents = docs;
  if (a.options.count("sp-model")) {
    if (a.options.count("vocab-size") || a.options.count("sp-type"))
      fail("prepare: --sp-model encodes with an existing model; --vocab-size and --sp-type only apply when training one");
    o.model = a.options["sp-model"];
  } else {
    if (!a.options.count("vocab-size"))
      fail("prepare: --tokenizer sentencepiece needs --vocab-size N (to train a model) or --sp-model FILE (to use one)");
    o.vocab_size = parse_count(a.options["vocab-size"], "--vocab-size");
    if (a.options.count("sp-type")) o.model_type = a.options["sp-type"];
  }
  auto s = data::prepare_sentencepiece(a.positional, out, o);
  std::printf("wrote %s: %lld tokens, %lld documents from %lld files (%s, vocab_size %lld, eot %lld; model %s%s)\n",
              out.c_str(), (long long)s.prepare.tokens, (long long)s.prepare.documents, (long long)s.prepare.files,
              s.tokenizer.c_str(), (long long)s.vocab_size, (long long)s.eot_token, s.model_path.c_str(),
              s.trained ? ", trained on the inputs" : "");
  return 0;
}

int cmd_sweep(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"time-limit"}, {"print"});
  if (a.help) return help(kSweepHelp);
  need(a, 1, kSweepHelp);
  Sweep sweep = load_sweep(a.positional[0]);
  check_sweep(sweep);
  if (has_flag(a, "print")) {
    std::fputs(format_sweep_commands(sweep, argv[0]).c_str(), stdout);
    return 0;
  }
  SweepOptions o;
  if (a.options.count("time-limit")) o.time_limit_s = parse_number(a.options["time-limit"], "--time-limit", false);
  SweepResult r = run_sweep(sweep, o);
  std::printf("%s\n", format_sweep_summary(r).c_str());
  return r.exit_code();
}

int cmd_report(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"out"}, {"with-constant", "no-plots"});
  if (a.help) return help(kReportHelp);
  if (a.positional.empty() || !a.options.count("out")) fail("usage: coil report RUNS ... --out DIR");
  ReportOptions o;
  o.with_constant = has_flag(a, "with-constant");
  o.plots = !has_flag(a, "no-plots");
  ReportResult r = write_report(expand_run_args(a.positional), a.options["out"], o);
  std::printf("%s\n", format_report_summary(r).c_str());
  return 0;
}

int cmd_info(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"world"}, {});
  if (a.help) return help(kInfoHelp);
  need(a, 1, kInfoHelp);
  Config config = fs::is_directory(a.positional[0]) ? load_run_config(a.positional[0], a.sets)
                                                    : load_config(a.positional[0], a.sets);
  if (config.train.dtype == "auto") config.train.dtype = "bf16";
  int world = a.options.count("world") ? std::stoi(a.options["world"]) : 1;
  std::fputs(format_info(config, model_info(config, world)).c_str(), stdout);
  return 0;
}

int cmd_export(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"format", "out", "dtype"}, {});
  if (a.help) return help(kExportHelp);
  need(a, 1, kExportHelp);
  std::string format = a.options.count("format") ? a.options["format"] : "safetensors";
  if (format != "safetensors") fail("export: --format must be safetensors, got '{}'", format);
  std::string src = a.positional[0];
  std::string out = a.options.count("out") ? a.options["out"]
                    : fs::is_directory(src) ? (fs::path(src) / "model.safetensors").string()
                                            : fs::path(src).replace_extension(".safetensors").string();
  auto print = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  export_safetensors(src, out, a.options.count("dtype") ? a.options["dtype"] : "f32", print);
  return 0;
}

int cmd_launch(int argc, char** argv) {
  LaunchOptions o;
  int i = 2;
  for (; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--help" || s == "-h") return help(kLaunchHelp);
    if (s == "--") {
      ++i;
      break;
    }
    if (s == "--nproc" && i + 1 < argc) o.nproc = std::stoi(argv[++i]);
    else if (s == "--port" && i + 1 < argc) o.master_port = std::stoi(argv[++i]);
    else fail("launch: unknown argument '{}' (usage: coil launch --nproc N -- COMMAND ...)", s);
  }
  std::vector<std::string> rest(argv + i, argv + argc);
  if (rest.empty()) fail("launch: nothing to run (usage: coil launch --nproc N -- train CONFIG)");
  return launch_local(o, rest);
}

int cmd_keys() {
  for (auto& [key, value] : config_keys()) std::printf("%-34s %s\n", key.c_str(), value.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  std::string cmd = argv[1];
  try {
    if (cmd == "--help" || cmd == "-h" || cmd == "help") return help(kUsage);
    if (cmd == "--version") return print_version();
    if (cmd == "train") return cmd_train(argc, argv, false);
    if (cmd == "resume") return cmd_train(argc, argv, true);
    if (cmd == "eval") return cmd_eval(argc, argv);
    if (cmd == "prepare") return cmd_prepare(argc, argv);
    if (cmd == "info") return cmd_info(argc, argv);
    if (cmd == "export") return cmd_export(argc, argv);
    if (cmd == "launch") return cmd_launch(argc, argv);
    if (cmd == "sweep") return cmd_sweep(argc, argv);
    if (cmd == "report") return cmd_report(argc, argv);
    if (cmd == "keys") return cmd_keys();
    std::fprintf(stderr, "coil: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
