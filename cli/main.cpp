// The `coil` command line: train, resume, eval, generate, prepare, info, import, export, launch,
// sweep, report.
#include <csignal>
#include <cstdint>
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
#include "dist/launch.h"
#include "kernels/cpu/parallel.h"
#include "kernels/matmul.h"
#include "scaling/length_eval.h"
#include "scaling/plot.h"
#include "scaling/report.h"
#include "scaling/sweep.h"
#include "scaling/sweep_runner.h"
#include "train/config.h"
#include "train/generate.h"
#include "train/hf_interop.h"
#include "train/info.h"
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
  generate RUN_DIR|CHECKPOINT           continue prompts with a trained model (--prompt, ...)
  eval RUN_DIR ... --lengths 64..1048576  accuracy against sequence length (synthetic tasks)
  prepare --out FILE.h5 TEXT ...        text files to a token file (byte-level or SentencePiece)
  info CONFIG [--set key=value ...]     parameters, FLOPs per token, memory estimate
  import MODEL_DIR --out DIR|FILE.h5    a Hugging Face or mamba_ssm model to a coil checkpoint
  export CHECKPOINT|RUN_DIR [--format safetensors|hf|mamba_ssm] [--out PATH] [--dtype f32|bf16]
  launch --nproc N -- COMMAND ...       run N local ranks (data parallel)
  sweep SWEEP.yaml [--print]            run a grid of runs (skips finished, resumes interrupted)
  report RUNS ... --out DIR             scaling table, power-law fits and plots of runs
  plot runs|scaling|lengths ARGS ...    draw a plot with scripts/plot_*.py (loss curves, ...)
  keys                                  every config key with its default and range

`coil COMMAND --help` describes one command. docs/CONFIG.md documents the config keys,
docs/SCALING.md sweeps and reports.
)";

const char* kTrainHelp = R"(usage: coil train CONFIG [--set key.path=value ...] [--stop-after N] [--time-limit SECONDS]

Trains the run that CONFIG describes into its run directory (run.dir, default runs/<run.name>):
config.yaml (the resolved config), metrics.jsonl, checkpoints/step_*.h5.
  --set key.path=value   override any config key, checked like the file (repeatable),
                         e.g. --set train.steps=100 --set optim.lr=1e-3
  --stop-after N         stop after N steps of this call, saving a checkpoint (to split a run
                         over time-limited jobs: the same command continues it)
  --time-limit SECONDS   stop at the first step boundary after SECONDS of this call, saving a
                         checkpoint (exit status 3); the same command continues
If the run directory already holds the same run, training continues from its latest
checkpoint (a finished run does nothing); if it holds a different run, this is an error listing
the differences. Nothing is written into the run directory before every check has passed.
Ctrl-C (or SIGTERM) saves a checkpoint at the next step boundary and stops; a second one
exits at once. Exit status: 0 done (or --stop-after reached), 1 error, 3 the time limit
stopped it, 128+signal when interrupted (after saving).
)";

const char* kResumeHelp = R"(usage: coil resume RUN_DIR [--set key.path=value ...] [--stop-after N] [--time-limit SECONDS]

Continues the run in RUN_DIR from its newest checkpoint that verifies (a damaged newest one,
or one of another model, is reported, moved aside as step_N.h5.corrupt or .other-model, and
the previous one used). The run's config.yaml is used; --set may change bookkeeping keys
(eval.*, checkpoint.*, log.*, train.max_nan_skips) and train.steps (the learning-rate schedule
is then recomputed for the new length), but not what is computed.
--stop-after and --time-limit stop it as they stop `coil train` (see coil train --help).
)";

const char* kEvalHelp = R"(usage: coil eval CONFIG|RUN_DIR [--checkpoint FILE] [--batches N|all] [--set k=v ...]
       coil eval RUN_DIR [RUN_DIR ...] --lengths LIST [--examples N] [--batch-tokens T] [--plot FILE]

Evaluates a checkpoint (default: the run's newest good one) on the fixed held-out batches:
loss, perplexity, bits per byte for byte-level token files and, for the synthetic copying
and induction tasks, accuracy on the answer positions.
  --batches N|all   micro-batches of held-out windows (default eval.batches); all: the whole
                    held-out split of the token files (the same as --set eval.batches=all)
  --set train.dtype=bf16   evaluate in bf16 on a GPU (any run; the weights are fp32)
A run whose checkpoints are all damaged is an error (exit 1).
With --lengths (runs of a synthetic task with answers: induction heads, selective copying):
accuracy against sequence length, the Mamba paper's Table 11. Each run's model answers a fixed
validation set of N examples (--examples, default 256) generated at each length, in batches of
max(1, T / length) examples (--batch-tokens, default 1048576). A length that does not fit in
memory is reported as OOM and the others go on. Writes RUN_DIR/length_eval.csv (rewritten after
each length), prints the table of all runs and plots accuracy against length, one line per run
(scripts/plot_lengths.py, as `coil plot lengths`), to --plot FILE (default: RUN_DIR/length_eval.png
for one run, length_eval.png here for several).
  --lengths LIST   comma-separated lengths; A..B is every power of two from A to B:
                   --lengths 64..1048576 is the paper's 2^6 to 2^20
)";

const char* kGenerateHelp = R"(usage: coil generate RUN_DIR|CHECKPOINT [--prompt TEXT | --prompt-file FILE] [options]

Continues prompts with the model of a checkpoint (a run directory's newest good one, or a
checkpoint file), decoding with the tokenizer the run was trained with; the tokens are printed
as they come. Prompts: --prompt, or --prompt-file (one prompt a line), or else standard input
(one a line); several prompts run as one batch and print in their order, each prompt followed
by its continuation. A continuation ends at the end-of-text token or after --max-new-tokens.
  --max-new-tokens N   tokens to generate per prompt (default 128)
  --temperature T      sample at temperature T (0: greedy); greedy is the default unless
                       --top-k or --top-p is given (then T defaults to 1)
  --top-k K            sample among the K most likely tokens
  --top-p P            sample from the smallest set of most likely tokens holding P of the
                       probability, P in (0, 1]
  --seed S             the sampling seed (default 0): the same seed gives the same sample
  --ids                prompts and output are token ids separated by spaces, no tokenizer (for
                       runs on synthetic tasks, or whose tokenizer is not built into coil)
  --tokenizer FILE     decode with this token file or SentencePiece .model (when the run's
                       token files have moved)
  --no-echo            print only the continuations
  --device D           auto (default: a GPU when there is one), cpu, cuda, cuda:N
  --no-cuda-graph      run the decode step eagerly on a GPU (for comparison)
A summary (tokens, seconds, tokens/s, state memory per sequence) goes to standard error.
docs/GENERATION.md describes how generation works.
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
  --world N   N data-parallel ranks: the accumulation for train.tokens_per_step, and with
              --set train.zero=1 the AdamW moments one rank holds (1/N of them)
)";

const char* kExportHelp = R"(usage: coil export CHECKPOINT|RUN_DIR [--format F] [--out PATH] [--dtype f32|bf16]

Writes a checkpoint's model (RUN_DIR: its newest good checkpoint) for other frameworks, in
f32 (default) or bf16. docs/FORMATS.md has the layouts.
  --format safetensors   the default: one file of the parameters under coil's names (mamba_ssm's
                         state-dict names; lm_head.weight too when tied) and the config in its
                         metadata; safetensors.torch.load_file reads it. Default --out: the
                         checkpoint with .safetensors (RUN_DIR: RUN_DIR/model.safetensors).
  --format hf            a directory AutoModelForCausalLM.from_pretrained loads: config.json,
                         model.safetensors, generation_config.json; MambaForCausalLM (Mamba),
                         LlamaForCausalLM (Transformer++) or GPT2LMHeadModel (GPT-2). Default
                         --out: the checkpoint's name + -hf (RUN_DIR: RUN_DIR/hf).
  --format mamba_ssm     a directory for mamba_ssm's MambaLMHeadModel (Mamba and hybrids):
                         config.json (its MambaConfig) and model.safetensors (its state dict).
                         Default --out: the checkpoint's name + -mamba_ssm (RUN_DIR: RUN_DIR/mamba_ssm).
hf and mamba_ssm carry the tokenizer of the run's token files: tokenizer.model for SentencePiece,
a description in config.json (coil_tokenizer) otherwise. A directory is written complete or
not at all; an existing one is replaced only when it is an earlier export.
)";

const char* kImportHelp = R"(usage: coil import MODEL_DIR --out DIR|FILE.h5

Reads a Hugging Face model directory (config.json and model.safetensors, or the shards that
model.safetensors.index.json names) of MambaForCausalLM, LlamaForCausalLM or GPT2LMHeadModel,
or a mamba_ssm MambaLMHeadModel directory (its config.json and the state dict as
model.safetensors), and writes it for coil:
  --out FILE.h5   a coil checkpoint (step 0): coil eval CONFIG --checkpoint FILE.h5, coil export
                  FILE.h5, or model.init_from: FILE.h5 in a run config
  --out DIR       a new directory with that checkpoint (DIR/model.h5) and DIR/config.yaml, a run
                  config whose model section is the source's and that starts from the weights
                  (model.init_from); fine-tune with
                  coil train DIR/config.yaml --set data.path=TOKENS.h5
The model config comes from config.json (and is named after coil's preset of the same
architecture, if one is); settings coil cannot reproduce and tensors that are missing, extra or
of another shape than config.json implies are errors naming them, and nothing is written.
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
Ctrl-C (or SIGTERM) does the same at once. Several sweeps of one file may run at once (one a
GPU: CUDA_VISIBLE_DEVICES=1 coil sweep FILE &): a sweep locks OUT_DIR/NAME.lock while it trains
a run, and the others pass over it to the next, so the runs are dealt as the GPUs come free.
Exit status: 0 every run finished (or another sweep holds it), 1 a run failed, 3 the time limit
stopped the sweep, 128+signal when interrupted.
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
LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT=P, default 29500) and waits; if one fails,
the others are stopped. coil also runs under torchrun, srun and mpirun: docs/DISTRIBUTED.md.
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

// An option's whole-number value in [min, max]; anything else is an error naming the option.
int64_t parse_count(const std::string& text, const char* option, int64_t min = 0, int64_t max = INT64_MAX) {
  size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || v < min || v > max)
    fail("{} expects a whole number {}, got '{}'", option,
         max == INT64_MAX ? fmt::format(">= {}", min) : fmt::format("in [{}, {}]", min, max), text);
  return v;
}

// An option's positive number of seconds.
double parse_seconds(const std::string& text, const char* option) {
  size_t used = 0;
  double v = -1;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size() || !(v > 0))
    fail("{} expects a positive number of seconds, got '{}'", option, text);
  return v;
}

// Any number (its range is checked where it is used).
double parse_real(const std::string& text, const char* option) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
  }
  if (used == 0 || used != text.size()) fail("{} expects a number, got '{}'", option, text);
  return v;
}

void need(const Args& a, size_t n, const char* usage) {
  if (a.positional.size() != n) fail("{}", std::string(usage).substr(0, std::string(usage).find('\n')));
}

int cmd_train(int argc, char** argv, bool resume) {
  Args a = parse_args(argc, argv, 2, {"stop-after", "time-limit"}, {});
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
  if (a.options.count("time-limit")) o.time_limit_s = parse_seconds(a.options["time-limit"], "--time-limit");
  TrainResult r = run_training(config, o);
  if (r.interrupted && r.signal) return 128 + r.signal;
  return r.time_limit_reached ? 3 : 0;
}

// `coil eval RUN... --lengths LIST`: the length sweep of each run, the table, the plot.
int eval_lengths(Args& a) {
  if (a.positional.empty()) fail("usage: coil eval RUN_DIR [RUN_DIR ...] --lengths LIST (see --help)");
  if (a.options.count("batches")) fail("eval: --batches is for the held-out evaluation; with --lengths use --examples");
  if (a.options.count("checkpoint") && a.positional.size() > 1)
    fail("eval: --checkpoint names one run's checkpoint, but {} runs are given", a.positional.size());
  scaling::LengthEvalOptions o;
  o.lengths = scaling::parse_lengths(a.options["lengths"]);
  if (a.options.count("examples")) o.examples = parse_count(a.options["examples"], "--examples");
  if (a.options.count("batch-tokens")) o.batch_tokens = parse_count(a.options["batch-tokens"], "--batch-tokens");
  if (a.options.count("checkpoint")) o.checkpoint = a.options["checkpoint"];
  auto print = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  std::vector<scaling::LengthEvalResult> results;
  std::vector<std::string> plot_args;
  for (const auto& run : a.positional) {
    if (!fs::is_directory(run)) fail("eval --lengths: '{}' is not a run directory", run);
    Config config = load_run_config(run, a.sets);
    config.run.dir = run;
    results.push_back(scaling::evaluate_lengths(config, o, print));
    plot_args.push_back(results.back().csv);
    std::printf("wrote %s\n", results.back().csv.c_str());
  }
  std::fputs(scaling::format_length_table(results).c_str(), stdout);
  std::string png = a.options.count("plot")       ? a.options["plot"]
                    : a.positional.size() == 1 ? (fs::path(a.positional[0]) / "length_eval.png").string()
                                                : "length_eval.png";
  plot_args.insert(plot_args.end(), {"-o", png});
  scaling::PlotResult plot = scaling::run_plot_script("plot_lengths.py", plot_args);
  if (plot.drawn) std::printf("wrote %s\n", png.c_str());
  else std::fprintf(stderr, "warning: no plot: %s\n", plot.problem.c_str());
  return 0;
}

int cmd_eval(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"checkpoint", "batches", "lengths", "examples", "batch-tokens", "plot"}, {});
  if (a.help) return help(kEvalHelp);
  if (a.options.count("lengths")) return eval_lengths(a);
  for (const char* k : {"examples", "batch-tokens", "plot"})
    if (a.options.count(k)) fail("eval: --{} belongs to the length sweep (--lengths)", k);
  need(a, 1, kEvalHelp);
  if (a.options.count("batches")) {  // checked here for the flag's own form, then like the key
    const std::string& n = a.options["batches"];
    bool count = true;
    try {
      parse_count(n, "--batches", 1);
    } catch (const Error&) {
      count = false;
    }
    if (!count && n != "all") fail("--batches expects a whole number >= 1 or all, got '{}'", n);
    a.sets.push_back("eval.batches=" + n);
  }
  std::string src = a.positional[0];
  Config config;
  if (fs::is_directory(src)) {
    config = load_run_config(src, a.sets);
    config.run.dir = src;
  } else {
    config = load_config(src, a.sets);
  }
  auto print = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  EvalResult r = evaluate(config, a.options.count("checkpoint") ? a.options["checkpoint"] : "", print);
  std::printf("checkpoint  %s (step %lld)\n", r.checkpoint.empty() ? "(initial weights)" : r.checkpoint.c_str(),
              (long long)r.step);
  std::printf("batches     %lld (%lld windows of %lld tokens, %lld targets)\n", (long long)r.batches,
              (long long)r.windows, (long long)config.train.seq_len, (long long)r.targets);
  std::printf("loss        %.6f\nperplexity  %.4f\n", r.loss, r.perplexity);
  if (r.bits_per_byte >= 0) std::printf("bits/byte   %.4f\n", r.bits_per_byte);
  if (r.accuracy >= 0) std::printf("accuracy    %.2f%%\n", 100 * r.accuracy);
  return 0;
}

int cmd_generate(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2,
                      {"prompt", "prompt-file", "max-new-tokens", "temperature", "top-k", "top-p", "seed", "tokenizer",
                       "device"},
                      {"ids", "no-echo", "no-cuda-graph"});
  if (a.help) return help(kGenerateHelp);
  need(a, 1, kGenerateHelp);
  if (!a.sets.empty()) fail("generate: --set does not apply (the model is the checkpoint's)");
  GenerateCommand c;
  c.source = a.positional[0];
  if (a.options.count("prompt") && a.options.count("prompt-file"))
    fail("generate: give --prompt or --prompt-file, not both");
  c.has_prompt = a.options.count("prompt") > 0;
  if (c.has_prompt) c.prompt = a.options["prompt"];
  if (a.options.count("prompt-file")) c.prompt_file = a.options["prompt-file"];
  c.ids = has_flag(a, "ids");
  c.echo = !has_flag(a, "no-echo");
  c.cuda_graph = !has_flag(a, "no-cuda-graph");
  if (a.options.count("max-new-tokens"))
    c.max_new_tokens = parse_count(a.options["max-new-tokens"], "--max-new-tokens");
  if (a.options.count("temperature")) c.temperature = parse_real(a.options["temperature"], "--temperature");
  if (a.options.count("top-k")) c.top_k = parse_count(a.options["top-k"], "--top-k");
  if (a.options.count("top-p")) c.top_p = parse_real(a.options["top-p"], "--top-p");
  if (a.options.count("seed")) c.seed = uint64_t(parse_count(a.options["seed"], "--seed"));
  if (a.options.count("tokenizer")) c.tokenizer = a.options["tokenizer"];
  if (a.options.count("device")) c.device = a.options["device"];
  run_generate(c);
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
    o.vocab_size = parse_count(a.options["vocab-size"], "--vocab-size", 1);
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
  scaling::Sweep sweep = scaling::load_sweep(a.positional[0]);
  scaling::check_sweep(sweep);
  if (has_flag(a, "print")) {
    std::fputs(scaling::format_sweep_commands(sweep, argv[0]).c_str(), stdout);
    return 0;
  }
  scaling::SweepOptions o;
  if (a.options.count("time-limit")) o.time_limit_s = parse_seconds(a.options["time-limit"], "--time-limit");
  scaling::SweepResult r = scaling::run_sweep(sweep, o);
  std::printf("%s\n", scaling::format_sweep_summary(r).c_str());
  return r.exit_code();
}

int cmd_report(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"out"}, {"with-constant", "no-plots"});
  if (a.help) return help(kReportHelp);
  if (a.positional.empty() || !a.options.count("out")) fail("usage: coil report RUNS ... --out DIR");
  scaling::ReportOptions o;
  o.with_constant = has_flag(a, "with-constant");
  o.plots = !has_flag(a, "no-plots");
  scaling::ReportResult r = scaling::write_report(scaling::expand_run_args(a.positional), a.options["out"], o);
  std::printf("%s\n", scaling::format_report_summary(r).c_str());
  return 0;
}

const char* kPlotHelp = R"(usage: coil plot runs|scaling|lengths ARGS ...

Draws a plot with scripts/plot_<kind>.py under the first Python that has matplotlib (the one
`coil report` and `coil eval --lengths` use: $COIL_PYTHON, python3, /usr/bin/python3):
  coil plot runs RUN_DIR ... -o loss.png [--x step|tokens] [--log] [--val]
                           training (and validation) loss of runs (their metrics.jsonl)
  coil plot scaling REPORT_DIR [--out DIR]
                           the plots of a `coil report` directory
  coil plot lengths RUN_DIR|CSV ... -o lengths.png
                           accuracy against sequence length (`coil eval --lengths` CSVs)
`coil plot KIND --help` shows the script's own options. Exit status: the script's, or 1 when
no Python with matplotlib is found.
)";

int cmd_plot(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) == "--help" || std::string(argv[2]) == "-h") return help(kPlotHelp);
  const std::string kind = argv[2];
  if (kind != "runs" && kind != "scaling" && kind != "lengths")
    fail("plot: unknown kind '{}' (runs, scaling or lengths; see coil plot --help)", kind);
  scaling::PlotResult r =
      scaling::run_plot_script("plot_" + kind + ".py", std::vector<std::string>(argv + 3, argv + argc));
  if (!r.output.empty()) std::printf("%s\n", r.output.c_str());
  if (r.drawn) return 0;
  if (r.exit_code > 0 && r.exit_code != 3) return r.exit_code;  // the script said why
  fail("plot: {}", r.problem);
}

int cmd_info(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"world"}, {});
  if (a.help) return help(kInfoHelp);
  need(a, 1, kInfoHelp);
  Config config = fs::is_directory(a.positional[0]) ? load_run_config(a.positional[0], a.sets)
                                                    : load_config(a.positional[0], a.sets);
  if (config.train.dtype == layers::ComputeDType::automatic) config.train.dtype = layers::ComputeDType::bf16;
  int world = a.options.count("world") ? int(parse_count(a.options["world"], "--world", 1, 1 << 20)) : 1;
  std::fputs(format_info(config, model_info(config, world)).c_str(), stdout);
  return 0;
}

int cmd_export(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"format", "out", "dtype"}, {});
  if (a.help) return help(kExportHelp);
  need(a, 1, kExportHelp);
  std::string format = a.options.count("format") ? a.options["format"] : "safetensors";
  std::string src = a.positional[0];
  std::string out = a.options.count("out") ? a.options["out"] : default_export_path(src, format);
  auto print = [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  export_model(src, format, out, a.options.count("dtype") ? a.options["dtype"] : "f32", print);
  return 0;
}

int cmd_import(int argc, char** argv) {
  Args a = parse_args(argc, argv, 2, {"out"}, {});
  if (a.help) return help(kImportHelp);
  need(a, 1, kImportHelp);
  if (!a.options.count("out")) fail("import: --out DIR|FILE.h5 is required (see coil import --help)");
  std::printf("%s\n", import_model(a.positional[0], a.options["out"]).c_str());
  return 0;
}

int cmd_launch(int argc, char** argv) {
  dist::LaunchOptions o;
  int i = 2;
  for (; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--help" || s == "-h") return help(kLaunchHelp);
    if (s == "--") {
      ++i;
      break;
    }
    if (s == "--nproc" && i + 1 < argc) o.nproc = int(parse_count(argv[++i], "--nproc", 1, 1024));
    else if (s == "--port" && i + 1 < argc) o.master_port = int(parse_count(argv[++i], "--port", 1, 65535));
    else fail("launch: unknown argument '{}' (usage: coil launch --nproc N -- COMMAND ...)", s);
  }
  std::vector<std::string> rest(argv + i, argv + argc);
  if (rest.empty()) fail("launch: nothing to run (usage: coil launch --nproc N -- train CONFIG)");
  return dist::launch_local(o, rest);
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
    if (cmd == "generate") return cmd_generate(argc, argv);
    if (cmd == "prepare") return cmd_prepare(argc, argv);
    if (cmd == "info") return cmd_info(argc, argv);
    if (cmd == "export") return cmd_export(argc, argv);
    if (cmd == "import") return cmd_import(argc, argv);
    if (cmd == "launch") return cmd_launch(argc, argv);
    if (cmd == "sweep") return cmd_sweep(argc, argv);
    if (cmd == "report") return cmd_report(argc, argv);
    if (cmd == "plot") return cmd_plot(argc, argv);
    if (cmd == "keys") return cmd_keys();
    std::fprintf(stderr, "coil: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
