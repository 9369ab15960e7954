// `coil generate RUN_DIR|CHECKPOINT` (docs/GENERATION.md): continues prompts with a trained
// model, decoding with the tokenizer its run was trained with, tokens streamed as they come.
//
// The model: the newest good checkpoint of a run directory, or a checkpoint file (which carries
// its resolved config). The tokenizer: the one the run's token files record (data.path of the
// checkpoint's config: byte-level, or the SentencePiece model the file carries), or --tokenizer
// FILE (a token file or a SentencePiece .model) when the data has moved. Runs on synthetic tasks
// and runs whose tokenizer is not built in have no text tokenizer: --ids gives and prints token
// ids instead.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace coil::train {

struct GenerateCommand {
  std::string source;          // RUN_DIR or CHECKPOINT
  std::string prompt;          // --prompt (has_prompt)
  bool has_prompt = false;
  std::string prompt_file;     // --prompt-file; neither: standard input, one prompt a line
  bool ids = false;            // prompts and output as token ids
  bool echo = true;            // print each prompt before its continuation
  int64_t max_new_tokens = 128;
  double temperature = -1;     // < 0: greedy unless top_k or top_p is given (then 1)
  int64_t top_k = 0;
  double top_p = 1.0;
  uint64_t seed = 0;
  std::string tokenizer;       // --tokenizer FILE
  std::string device = "auto";
  bool cuda_graph = true;
};

// Runs the command: output on `out`, the summary line on `log`. Raises coil::Error for bad
// input (naming the cause) before generating anything.
void run_generate(const GenerateCommand& command, std::FILE* out = stdout, std::FILE* log = stderr);

}  // namespace coil::train
