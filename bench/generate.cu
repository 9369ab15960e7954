// Generation benchmark (not a test), the measurement of docs/GENERATION.md: for the model of
// each config (random weights, bf16), random prompts of --prompt tokens continued by --new
// tokens, greedy (no end-of-text: every row runs to the end), at several batch sizes. The
// whole generation is timed (prefill + decode, until the last ids are on the host):
//   tokens/s       batch * new tokens / seconds (the issue's measure)
//   prefill s      until the first new tokens are on the host
//   ms/token       decode only, per step (at batch 1: the latency per token)
//   state/seq      the recurrent states and KV caches of one sequence
//   peak           the allocator's peak during the generation (weights included)
// Usage: bench_generate [--prompt N] [--new N] [--batches 1,16,...] [CONFIG[:BATCHES] ...]
// Default: configs/mamba-1.4b.yaml and configs/transformer++-1.3b.yaml at batches 1, 16, 64, 128,
// configs/mamba-130m.yaml and configs/transformer++-125m.yaml at 1 and 64.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/cuda.h"
#include "core/random.h"
#include "layers/generation.h"
#include "layers/inference.h"
#include "train/config.h"

using namespace coil;

namespace {

std::vector<int64_t> parse_batches(const std::string& text) {
  std::vector<int64_t> out;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find(',', begin);
    if (end == std::string::npos) end = text.size();
    out.push_back(std::stoll(text.substr(begin, end - begin)));
    begin = end + 1;
  }
  return out;
}

struct Job {
  std::string config;
  std::vector<int64_t> batches;
};

std::vector<std::vector<int64_t>> random_prompts(int64_t batch, int64_t length, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(batch), std::vector<int64_t>(size_t(length)));
  for (auto& p : prompts)
    for (auto& id : p) id = int64_t(gen.next_below(uint64_t(vocab)));
  return prompts;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t prompt = 2048, new_tokens = 128;
  std::vector<int64_t> default_batches;
  std::vector<Job> jobs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--prompt" && i + 1 < argc) prompt = std::stoll(argv[++i]);
    else if (a == "--new" && i + 1 < argc) new_tokens = std::stoll(argv[++i]);
    else if (a == "--batches" && i + 1 < argc) default_batches = parse_batches(argv[++i]);
    else if (a.rfind("--", 0) == 0) {
      std::fprintf(stderr, "usage: bench_generate [--prompt N] [--new N] [--batches 1,16,...] [CONFIG[:B,...] ...]\n");
      return 2;
    } else {
      const size_t colon = a.find(':');
      std::vector<int64_t> batches;
      if (colon != std::string::npos) batches = parse_batches(a.substr(colon + 1));
      jobs.push_back({a.substr(0, colon), batches});
    }
  }
  if (jobs.empty())
    jobs = {{"configs/mamba-1.4b.yaml", {1, 16, 64, 128}}, {"configs/transformer++-1.3b.yaml", {1, 16, 64, 128}},
            {"configs/mamba-130m.yaml", {1, 64}}, {"configs/transformer++-125m.yaml", {1, 64}}};
  for (auto& j : jobs)
    if (j.batches.empty()) j.batches = default_batches.empty() ? std::vector<int64_t>{1, 16, 64, 128} : default_batches;

  try {
    COIL_CHECK(cuda_available(), "bench_generate needs a GPU: {}", cuda_unavailable_reason());
    const Device gpu = Device::cuda(0);
    cudaDeviceProp prop{};
    COIL_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("generation on %s, bf16, random weights, greedy; prompt %lld + %lld new tokens; the whole generation "
                "timed (prefill + decode)\n\n",
                prop.name, (long long)prompt, (long long)new_tokens);
    std::printf("%-20s %6s %10s %9s %9s %9s %11s %10s\n", "model", "batch", "tokens/s", "total s", "prefill s",
                "ms/token", "state/seq", "peak");
    std::vector<std::string> summary;
    for (const Job& job : jobs) {
      layers::ModelConfig cfg = train::load_config(job.config).model.config;
      cfg.dtype = layers::ComputeDType::automatic;
      layers::LanguageModel model(cfg, 0);
      model.to(gpu);
      model.eval();
      layers::use_inference_weights(model);
      layers::GenerationOptions o;
      o.sampling.temperature = 0;
      o.max_new_tokens = 8;
      layers::generate(model, random_prompts(1, 64, cfg.vocab_size, 1), o);  // warm-up: cuBLASLt, first launches
      o.max_new_tokens = new_tokens;
      std::string line = "| coil " + cfg.name;
      for (int64_t batch : job.batches) {
        auto prompts = random_prompts(batch, prompt, cfg.vocab_size, uint64_t(batch));
        cuda::synchronize();
        reset_peak_memory(gpu);
        layers::GenerationResult r = layers::generate(model, prompts, o);
        const double seconds = r.prefill_seconds + r.decode_seconds;
        const double rate = double(batch * new_tokens) / seconds;
        const size_t peak = memory_stats(gpu).peak_in_use;
        std::printf("%-20s %6lld %10.0f %9.3f %9.3f %9.3f %11s %10s\n", cfg.name.c_str(), (long long)batch, rate,
                    seconds, r.prefill_seconds, r.steps ? 1e3 * r.decode_seconds / double(r.steps) : 0.0,
                    format_bytes(r.state_bytes / size_t(batch)).c_str(), format_bytes(peak).c_str());
        std::fflush(stdout);
        line += fmt::format(" | {:.0f}", rate);
        if (batch == job.batches.back()) line += " | " + format_bytes(peak) + " |";
      }
      summary.push_back(line);
    }
    std::printf("\nrows for docs/GENERATION.md (tokens/s at the batches above; peak at the largest):\n");
    for (auto& s : summary) std::printf("%s\n", s.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
