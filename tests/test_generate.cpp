// Recurrent inference and generation (layers/inference.h, layers/generation.h): for every
// family (and sinusoidal positions) the logits of prefill + step-by-step decoding equal the
// parallel forward's; a tiny
// model trained here on a copy task copies under greedy decoding; the same seed gives the same
// sample; bad input; [cuda]: the same on a GPU in bf16, and the captured CUDA graph decodes
// exactly as the eager step.
#include <cmath>

#include "core/allocator.h"
#include "core/cuda.h"
#include "core/cuda_graph.h"
#include "kernels/layout.h"
#include "layers/generation.h"
#include "layers/inference.h"
#include "optim/adamw.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::layers;
using Catch::Matchers::Contains;

namespace {

// The presets of the four families, and "sinusoidal-tiny": transformer++-tiny with sinusoidal
// positions (family_config).
const char* kFamilies[] = {"mamba-tiny", "transformer++-tiny", "gpt2-tiny", "hybrid-tiny", "sinusoidal-tiny"};

std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (auto& x : v) x = int64_t(gen.next_below(uint64_t(vocab)));
  return v;
}

Tensor ids_tensor(const std::vector<std::vector<int64_t>>& rows, Device device) {
  std::vector<int32_t> flat;
  for (auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return Tensor::from_vector(flat, {int64_t(rows.size()), int64_t(rows[0].size())}, DType::i32, device);
}

// Row b's logits at position t of the parallel forward's (B, T, V).
Tensor row_logits(const Tensor& logits, int64_t b, int64_t t) {
  return kernels::narrow(logits.narrow0(b, b + 1), 1, t, 1).reshape({logits.size(2)});
}

// Prefills each row's first prompt_lengths[b] tokens (one call per row: the lengths differ),
// then feeds every row its next tokens one step at a time; checks each logits row against the
// parallel forward of the whole sequences within `tolerance` (relative error).
void check_decoding_matches_forward(const LanguageModel& model, const std::vector<std::vector<int64_t>>& sequences,
                                    const std::vector<int64_t>& prompt_lengths, double tolerance) {
  const Device device = model.device();
  const int64_t batch = int64_t(sequences.size()), T = int64_t(sequences[0].size());
  Tensor reference = model.forward(ids_tensor(sequences, device)).value().to(Device::cpu(), DType::f32);
  InferenceState state(model, batch, T);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t P = prompt_lengths[size_t(b)];
    std::vector<int64_t> prompt(sequences[size_t(b)].begin(), sequences[size_t(b)].begin() + P);
    Tensor logits = prefill(model, state, ids_tensor({prompt}, device), b).to(Device::cpu(), DType::f32);
    INFO("row " << b << " prefill of " << P);
    CHECK(test::relative_error(logits.reshape({logits.size(1)}), row_logits(reference, b, P - 1)) < tolerance);
  }
  const int64_t shortest = *std::min_element(prompt_lengths.begin(), prompt_lengths.end());
  for (int64_t s = 0; s < T - *std::max_element(prompt_lengths.begin(), prompt_lengths.end()); ++s) {
    std::vector<int32_t> next;
    for (int64_t b = 0; b < batch; ++b) next.push_back(int32_t(sequences[size_t(b)][size_t(prompt_lengths[size_t(b)] + s)]));
    Tensor logits = forward_step(model, state, Tensor::from_vector(next, {batch}, DType::i32, device))
                        .to(Device::cpu(), DType::f32);
    for (int64_t b = 0; b < batch; ++b) {
      INFO("row " << b << " step " << s << " (position " << prompt_lengths[size_t(b)] + s << ", shortest prompt "
                  << shortest << ")");
      CHECK(test::relative_error(logits.narrow0(b, b + 1).reshape({logits.size(1)}),
                                 row_logits(reference, b, prompt_lengths[size_t(b)] + s)) < tolerance);
    }
  }
}

ModelConfig family_config(const std::string& family) {
  const bool sinusoidal = family == "sinusoidal-tiny";
  ModelConfig c = ModelConfig::preset(sinusoidal ? "transformer++-tiny" : family);
  if (sinusoidal) c.attention.positions = Positions::sinusoidal;
  c.n_layer = family == "hybrid-tiny" ? 4 : 2;
  return c;
}

}  // namespace

TEST_CASE("prefill and step-by-step decoding give the parallel forward's logits, every family (CPU, f32)",
          "[generate]") {
  for (const char* family : kFamilies) {
    INFO(family);
    LanguageModel model(family_config(family), 1);
    model.eval();
    const int64_t T = 12;
    std::vector<std::vector<int64_t>> seqs = {random_ids(T, 256, 2), random_ids(T, 256, 3), random_ids(T, 256, 4)};
    // Prompts shorter than the conv (1, 2 < d_conv - 1), rows at different positions.
    check_decoding_matches_forward(model, seqs, {1, 2, 5}, 1e-5);
  }
}

TEST_CASE("sliding-window attention decodes as its parallel forward", "[generate]") {
  ModelConfig c = family_config("transformer++-tiny");
  c.attention.window = 4;
  LanguageModel model(c, 5);
  std::vector<std::vector<int64_t>> seqs = {random_ids(14, 256, 6), random_ids(14, 256, 7)};
  check_decoding_matches_forward(model, seqs, {3, 6}, 1e-5);
}

TEST_CASE("greedy decoding of tiny models trained here on a copy task reproduces the copy", "[generate]") {
  // Sequences "a b c d | a b c d": 4 random data tokens (1..8), the separator 9, the copy; the
  // loss is taken on the copy only. A 2-layer Mamba and Transformer++ of width 32 learn it in
  // a second of CPU time (all 32 of 32 held-out copies right after 125 and 75 steps).
  const int64_t K = 4, L = 2 * K + 1, sep = 9, batch = 16;
  for (auto [preset, steps] : {std::pair{"mamba-tiny", 150}, {"transformer++-tiny", 100}}) {
    INFO(preset);
    ModelConfig c = ModelConfig::preset(preset);
    c.vocab_size = 10;
    c.d_model = 32;
    LanguageModel model(c, 3);
    std::vector<std::pair<std::string, autograd::Variable>> params;
    for (auto& [name, p] : model.named_parameters()) params.emplace_back(name, p->var);
    optim::AdamW opt(optim::groups_by_name(params, 0.0), {1e-2, 0.9, 0.99, 1e-8});
    Generator gen(11);
    auto example = [&](std::vector<int64_t>& seq) {
      seq.assign(size_t(L + 1), sep);
      for (int64_t i = 0; i < K; ++i) seq[size_t(i)] = seq[size_t(K + 1 + i)] = 1 + int64_t(gen.next_below(8));
    };
    std::vector<int64_t> seq;
    for (int step = 0; step < steps; ++step) {
      std::vector<int64_t> inputs, targets;
      for (int64_t b = 0; b < batch; ++b) {
        example(seq);
        for (int64_t t = 0; t < L; ++t) {
          inputs.push_back(seq[size_t(t)]);
          targets.push_back(t >= K ? seq[size_t(t + 1)] : -100);
        }
      }
      model.loss(Tensor::from_vector(inputs, {batch, L}), Tensor::from_vector(targets, {batch, L})).backward();
      opt.step();
      opt.zero_grad();
    }
    model.eval();
    std::vector<std::vector<int64_t>> prompts, answers;
    for (int i = 0; i < 8; ++i) {
      example(seq);
      prompts.emplace_back(seq.begin(), seq.begin() + K + 1);
      answers.emplace_back(seq.begin() + K + 1, seq.begin() + 2 * K + 1);
    }
    GenerationOptions o;
    o.max_new_tokens = K;
    o.sampling.temperature = 0;
    GenerationResult r = generate(model, prompts, o);
    for (size_t i = 0; i < prompts.size(); ++i) {
      INFO("prompt " << i);
      CHECK(r.tokens[i] == answers[i]);
    }
  }
}

TEST_CASE("generation: the same seed gives the same sample, streamed as returned; eot ends a row", "[generate]") {
  LanguageModel model(family_config("hybrid-tiny"), 2);
  std::vector<std::vector<int64_t>> prompts = {random_ids(5, 256, 1), random_ids(3, 256, 2), random_ids(5, 256, 3)};
  GenerationOptions o;
  o.max_new_tokens = 6;
  o.sampling.temperature = 1.0;
  o.sampling.top_k = 50;
  o.sampling.seed = 42;
  std::vector<std::vector<int64_t>> streamed(prompts.size());
  std::vector<int64_t> ended;
  TokenSink sink{[&](int64_t p, int64_t t) { streamed[size_t(p)].push_back(t); },
                 [&](int64_t p) { ended.push_back(p); }};
  GenerationResult a = generate(model, prompts, o, sink);
  GenerationResult b = generate(model, prompts, o);
  CHECK(a.tokens == b.tokens);
  CHECK(a.tokens == streamed);
  CHECK(ended.size() == prompts.size());
  for (auto& t : a.tokens) CHECK(t.size() == 6);
  o.sampling.seed = 43;
  CHECK(generate(model, prompts, o).tokens != a.tokens);
  // Greedy ignores the seed; a row stops at its end-of-text token, which is not returned.
  o.sampling = {};
  o.sampling.temperature = 0;
  GenerationResult greedy = generate(model, prompts, o);
  o.eot_token = greedy.tokens[1][2];
  GenerationResult stopped = generate(model, prompts, o);
  const auto first_eot = std::find(greedy.tokens[1].begin(), greedy.tokens[1].end(), o.eot_token);
  CHECK(stopped.tokens[1] == std::vector<int64_t>(greedy.tokens[1].begin(), first_eot));
}

TEST_CASE("generation rejects bad input naming the cause", "[generate]") {
  LanguageModel gpt2(family_config("gpt2-tiny"), 1);  // 256 learned positions, vocabulary 256
  GenerationOptions o;
  o.max_new_tokens = 4;
  CHECK_THROWS_WITH(generate(gpt2, {}, o), Contains("no prompts"));
  CHECK_THROWS_WITH(generate(gpt2, {{1, 2}, {}}, o), Contains("prompt 2 is empty"));
  CHECK_THROWS_WITH(generate(gpt2, {{1, 256}}, o), Contains("token id 256 at position 1, outside the model's vocabulary"));
  CHECK_THROWS_WITH(generate(gpt2, {{-1}}, o), Contains("token id -1"));
  CHECK_THROWS_WITH(generate(gpt2, {random_ids(257, 256, 1)}, o), Contains("more than the 256 learned positions"));
  CHECK_THROWS_WITH(generate(gpt2, {random_ids(254, 256, 1)}, o), Contains("ask for at most 3 new tokens"));
  o.sampling.top_p = 0;
  CHECK_THROWS_WITH(generate(gpt2, {{1}}, o), Contains("top_p must be in (0, 1]"));
  o.sampling.top_p = 1.5;
  CHECK_THROWS_WITH(generate(gpt2, {{1}}, o), Contains("top_p must be in (0, 1]"));
  o.sampling.top_p = 1;
  o.sampling.temperature = -1;
  CHECK_THROWS_WITH(generate(gpt2, {{1}}, o), Contains("temperature must be >= 0"));
  o.sampling.temperature = 0;
  o.max_new_tokens = 0;
  CHECK_THROWS_WITH(generate(gpt2, {{1}}, o), Contains("max_new_tokens must be at least 1"));
}

// ---- GPU ----

namespace {

// A model of the family on the GPU, as generation runs it (bf16, inference weights).
void to_gpu_for_generation(LanguageModel& model) {
  model.to(Device::cuda());
  model.eval();
  use_inference_weights(model);
}

}  // namespace

TEST_CASE("on a GPU in bf16, decoding gives the parallel forward's logits, every family", "[generate][cuda]") {
  for (const char* family : kFamilies) {
    INFO(family);
    LanguageModel model(family_config(family), 1);
    to_gpu_for_generation(model);
    const int64_t T = 40;
    std::vector<std::vector<int64_t>> seqs = {random_ids(T, 256, 2), random_ids(T, 256, 3), random_ids(T, 256, 4)};
    check_decoding_matches_forward(model, seqs, {1, 2, 17}, 2e-2);
  }
}

TEST_CASE("a captured CUDA graph decodes exactly as the eager step", "[generate][cuda]") {
  for (const char* family : kFamilies) {
    INFO(family);
    LanguageModel model(family_config(family), 3);
    to_gpu_for_generation(model);
    std::vector<std::vector<int64_t>> prompts = {random_ids(7, 256, 1), random_ids(7, 256, 2), random_ids(3, 256, 3)};
    GenerationOptions o;
    o.max_new_tokens = 12;
    o.sampling.temperature = 0.8;
    o.sampling.top_p = 0.9;
    o.sampling.seed = 5;
    GenerationResult graphed = generate(model, prompts, o);
    o.cuda_graph = false;
    GenerationResult eager = generate(model, prompts, o);
    CHECK(graphed.steps == 11);
    CHECK(graphed.tokens == eager.tokens);
  }
}

TEST_CASE("a private pool keeps memory freed while it is active away from other tensors", "[generate][cuda]") {
  const Device gpu = Device::cuda();
  empty_cache(gpu);  // no free blocks of the shared cache that a best fit could pick instead
  const int pool = create_private_pool(gpu);
  set_active_private_pool(gpu, pool);
  void* kept = Tensor::empty({1 << 20}, DType::f32, gpu).raw();  // allocated and freed in the pool
  set_active_private_pool(gpu, 0);
  Tensor other = Tensor::empty({1 << 20}, DType::f32, gpu);
  CHECK(other.raw() != kept);
  set_active_private_pool(gpu, pool);
  CHECK(Tensor::empty({1 << 20}, DType::f32, gpu).raw() == kept);  // the pool serves its own block again
  set_active_private_pool(gpu, 0);
  release_private_pool(gpu, pool);
  CHECK(Tensor::empty({1 << 20}, DType::f32, gpu).raw() == kept);  // back in the shared cache
  CudaGraph graph(gpu);
  Tensor x = Tensor::zeros({4}, DType::f32, gpu);
  Tensor one = Tensor::ones({4}, DType::f32, gpu);
  graph.capture([&] { x.copy_(kernels::narrow(one, 0, 0, 4)); });
  graph.replay();
  CHECK(x.to_vector<float>() == std::vector<float>{1, 1, 1, 1});
}
