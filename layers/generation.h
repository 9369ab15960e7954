// Generation: prompts of token ids continued by a language model, all prompts in one batch
// (docs/GENERATION.md).
//
//   1. prefill (layers/inference.h): consecutive prompts of the same length share a call, at
//      most prefill_tokens prompt tokens each (this bounds the activations); each row's first
//      new token is drawn from its last logits.
//   2. decode: forward_step + sample_tokens (kernels/sampling.h) for every row at once, each
//      row at its own position. On a GPU the step (hundreds of small kernels) is captured as a
//      CUDA graph after one eager run and replayed; the sampled ids are the step's output and
//      the next step's input in one device buffer. The host reads them back once a step, while
//      the next step already runs (one copy into page-locked memory, one event wait).
//   3. a row ends at its end-of-text token (not returned) or after max_new_tokens; generation
//      ends when every row has.
// A TokenSink sees the tokens as they arrive (step after step, by row within a step) and the
// end of each row.
#pragma once
#include <functional>
#include <vector>

#include "kernels/sampling.h"
#include "layers/model.h"

namespace coil::layers {

struct GenerationOptions {
  int64_t max_new_tokens = 128;
  kernels::SamplingOptions sampling;  // temperature 0: greedy; vocab 0: the model's vocab_size
  int64_t eot_token = -1;             // a row ends after drawing it (-1: no such token)
  bool cuda_graph = true;             // capture the decode step (CUDA only)
  int64_t prefill_tokens = 32768;     // prompt tokens per prefill call
};

struct GenerationResult {
  std::vector<std::vector<int64_t>> tokens;  // per prompt: its new tokens, end-of-text excluded
  int64_t steps = 0;                         // decode steps run
  double prefill_seconds = 0;                // until the first new tokens were on the host
  double decode_seconds = 0;                 // the rest
  size_t state_bytes = 0;                    // the recurrent states and KV caches of all rows
};

struct TokenSink {
  std::function<void(int64_t prompt, int64_t token)> token;
  std::function<void(int64_t prompt)> end;
};

// Raises before any work for: no prompts, an empty prompt, an id outside [0, vocab_size),
// max_new_tokens < 1, bad sampling options, and (learned positions) a prompt that with
// max_new_tokens would run past model.attention.max_seq_len; the errors name the prompt
// (numbered from 1).
GenerationResult generate(const LanguageModel& model, const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationOptions& options, const TokenSink& sink = {});

}  // namespace coil::layers
