#include "layers/generation.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "core/cuda.h"
#include "core/cuda_graph.h"
#include "layers/inference.h"

namespace coil::layers {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void check_prompts(const LanguageModel& model, const std::vector<std::vector<int64_t>>& prompts,
                   const GenerationOptions& o) {
  const ModelConfig& cfg = model.config();
  COIL_CHECK(!prompts.empty(), "generate: no prompts given");
  COIL_CHECK(o.max_new_tokens >= 1, "generate: max_new_tokens must be at least 1, got {}", o.max_new_tokens);
  COIL_CHECK(o.prefill_tokens >= 1, "generate: prefill_tokens must be at least 1, got {}", o.prefill_tokens);
  kernels::check_sampling_options("generate", o.sampling, cfg.padded_vocab_size());
  COIL_CHECK(o.sampling.vocab <= cfg.vocab_size, "generate: sampling vocab {} exceeds the model's vocab_size {}",
             o.sampling.vocab, cfg.vocab_size);
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const size_t number = i + 1;
    COIL_CHECK(!p.empty(), "generate: prompt {} is empty (a prompt needs at least one token)", number);
    for (size_t t = 0; t < p.size(); ++t)
      COIL_CHECK(p[t] >= 0 && p[t] < cfg.vocab_size,
                 "generate: prompt {} has token id {} at position {}, outside the model's vocabulary [0, {})", number,
                 p[t], t, cfg.vocab_size);
    if (model.backbone->pos_embedding) {
      const int64_t limit = cfg.attention.max_seq_len, length = int64_t(p.size());
      COIL_CHECK(length <= limit,
                 "generate: prompt {} has {} tokens, more than the {} learned positions of this model "
                 "(model.attention.max_seq_len)",
                 number, length, limit);
      COIL_CHECK(length + o.max_new_tokens - 1 <= limit,
                 "generate: prompt {} has {} tokens; {} new tokens would run past the {} learned positions of this "
                 "model (model.attention.max_seq_len): ask for at most {} new tokens",
                 number, length, o.max_new_tokens, limit, limit - length + 1);
    }
  }
}

// Reads each step's sampled ids to the host. GPU: an asynchronous copy into page-locked
// memory, so the host can queue the next step before it waits for this one's ids.
class IdsReadback {
 public:
  explicit IdsReadback(const Tensor& ids) : ids_(ids), host_(size_t(ids.numel())) {
    if (ids.device().is_cuda()) copy_ = std::make_unique<cuda::AsyncHostCopy>(ids.nbytes());
  }
  void start() {
    if (copy_) copy_->start(ids_.raw());
    else std::memcpy(host_.data(), ids_.raw(), ids_.nbytes());
  }
  const int32_t* finish() {
    return copy_ ? static_cast<const int32_t*>(copy_->finish()) : host_.data();
  }

 private:
  Tensor ids_;
  std::vector<int32_t> host_;
  std::unique_ptr<cuda::AsyncHostCopy> copy_;
};

}  // namespace

GenerationResult generate(const LanguageModel& model, const std::vector<std::vector<int64_t>>& prompts,
                          const GenerationOptions& options, const TokenSink& sink) {
  check_prompts(model, prompts, options);
  autograd::NoGradGuard no_grad;
  const Device device = model.device();
  const int64_t batch = int64_t(prompts.size());
  size_t longest = 0;
  for (auto& p : prompts) longest = std::max(longest, p.size());
  InferenceState state(model, batch, int64_t(longest) + options.max_new_tokens - 1);
  kernels::SamplingOptions sampling = options.sampling;
  if (sampling.vocab == 0) sampling.vocab = model.config().vocab_size;

  GenerationResult result;
  result.tokens.resize(prompts.size());
  result.state_bytes = state.bytes();
  Tensor ids = Tensor::zeros({batch}, DType::i32, device);  // each step's input and output
  IdsReadback readback(ids);
  std::vector<bool> done(prompts.size(), false);
  int64_t running = batch;
  auto take = [&](const int32_t* drawn) {
    for (int64_t b = 0; b < batch; ++b) {
      if (done[size_t(b)]) continue;
      if (drawn[b] == options.eot_token) {
        done[size_t(b)] = true, --running;
        if (sink.end) sink.end(b);
        continue;
      }
      result.tokens[size_t(b)].push_back(drawn[b]);
      if (sink.token) sink.token(b, drawn[b]);
    }
  };

  const Clock::time_point start = Clock::now();
  for (int64_t row = 0; row < batch;) {
    const int64_t length = int64_t(prompts[size_t(row)].size());
    const int64_t most = std::max<int64_t>(1, options.prefill_tokens / length);
    int64_t end = row;
    std::vector<int32_t> flat;
    while (end < batch && end - row < most && int64_t(prompts[size_t(end)].size()) == length) {
      flat.insert(flat.end(), prompts[size_t(end)].begin(), prompts[size_t(end)].end());
      ++end;
    }
    Tensor tokens = Tensor::from_vector(flat, {end - row, length}, DType::i32, device);
    Tensor logits = prefill(model, state, tokens, row);
    kernels::sample_tokens(logits, state.positions.narrow0(row, end), sampling, ids.narrow0(row, end));
    row = end;
  }
  readback.start();
  take(readback.finish());
  result.prefill_seconds = seconds_since(start);

  // The decode step: eager at first (lazy set-up such as cuBLASLt's workspace happens there),
  // then, on a GPU, captured once and replayed.
  const Clock::time_point decode_start = Clock::now();
  auto step = [&] {
    Tensor logits = forward_step(model, state, ids);
    kernels::sample_tokens(logits, state.positions, sampling, ids);
  };
  std::unique_ptr<CudaGraph> graph;
  if (device.is_cuda() && options.cuda_graph && options.max_new_tokens > 2) graph = std::make_unique<CudaGraph>(device);
  auto run_step = [&] {
    if (graph && result.steps > 0) {
      if (!graph->captured()) graph->capture(step);
      graph->replay();
    } else {
      step();
    }
    ++result.steps;
  };
  if (running > 0 && options.max_new_tokens > 1) {
    run_step();
    readback.start();
    for (int64_t drawn = 2; drawn <= options.max_new_tokens; ++drawn) {
      if (drawn < options.max_new_tokens) run_step();  // queued before waiting for the ids
      take(readback.finish());
      if (running == 0) break;
      if (drawn < options.max_new_tokens) readback.start();
    }
  }
  result.decode_seconds = seconds_since(decode_start);
  // A step queued ahead may still run (every row ended early): let it finish before the graph
  // and the states go.
  if (device.is_cuda()) cuda::synchronize();
  for (int64_t b = 0; b < batch; ++b)
    if (!done[size_t(b)] && sink.end) sink.end(b);
  return result;
}

}  // namespace coil::layers
