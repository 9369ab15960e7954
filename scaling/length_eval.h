// Accuracy against sequence length (`coil eval RUN... --lengths 64,128,...`): the Mamba paper's
// length-extrapolation table (Table 11, docs/SYNTHETIC.md) for runs trained on a synthetic task
// with answers (induction heads, selective copying).
//
// At each length the run's model (its newest good checkpoint) answers a fixed validation set
// of `examples` examples generated at that length (the same ones at every call: the task's
// validation stream at that length), in batches of max(1, batch_tokens / length) examples,
// without gradients. A length whose batch does not fit in memory is reported as "OOM" and the
// others go on; a length beyond a learned position table (model.attention.max_seq_len) as
// "too long". After each length the CSV is rewritten, so an interrupted sweep keeps what it
// measured.
//
// The CSV (docs/FORMATS.md), <run_dir>/length_eval.csv: one row per length,
//   run,task,train_length,step,length,examples,batch,correct,accuracy,loss,chance,status,
//   seconds,peak_memory_bytes
// scripts/plot_lengths.py draws accuracy against length from one or more of them.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "train/config.h"

namespace coil::scaling {

struct LengthEvalOptions {
  std::vector<int64_t> lengths;
  int64_t examples = 256;         // per length (rounded up to whole batches)
  int64_t batch_tokens = 1 << 20;  // tokens per batch: batch = max(1, batch_tokens / length)
  std::string checkpoint;         // empty: the run's newest good checkpoint
};

struct LengthRow {
  int64_t length = 0, examples = 0, batch = 0, correct = 0;
  double accuracy = -1, loss = -1, seconds = 0;
  int64_t peak_memory_bytes = -1;  // the device's peak during this length (CUDA), -1 on the CPU
  std::string status;              // "ok" | "OOM" | "too long"
  std::string note;                // for OOM and too long: why
};

struct LengthEvalResult {
  std::string run, run_dir, task, checkpoint;  // checkpoint: "" for the initial weights
  int64_t step = 0, train_length = 0;
  double chance = 0;                           // accuracy of a uniform guess among the data tokens
  std::vector<LengthRow> rows;
  std::string csv;                             // the path written
};

// "64,256,1024" or "64..1048576" (every power of two from the first to the last, both powers
// of two), or a mix: "64..1024,3000". Errors name the offending item.
std::vector<int64_t> parse_lengths(const std::string& text);

// The sweep for one run (config: its config.yaml; the run directory receives the CSV).
LengthEvalResult evaluate_lengths(const train::Config& config, const LengthEvalOptions& options,
                                  const std::function<void(const std::string&)>& print = nullptr);

void write_length_csv(const LengthEvalResult& result, const std::string& path);

// The table of several runs, as the paper's: a row per run, a column per length (accuracy in
// %, OOM or "long"; * marks the training length), and the examples per length.
std::string format_length_table(const std::vector<LengthEvalResult>& results);

}  // namespace coil::scaling
