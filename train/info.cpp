#include "train/info.h"

#include <cstdlib>

#include "layers/model_facts.h"

namespace coil::train {

ModelInfo model_info(const Config& config, int world_size) {
  const auto& m = config.model.config;
  ModelInfo info;
  const layers::ParameterCounts counts = layers::parameter_counts(m);
  info.parameters = counts.total;
  info.non_embedding_parameters = counts.non_embedding;
  info.matmul_parameters = counts.matmul;
  const int64_t L = config.train.seq_len;
  info.flops_per_token = layers::training_flops_per_token(m, L);
  info.grad_accum = config.grad_accum(world_size);
  info.tokens_per_step = info.grad_accum * config.train.micro_batch * L * world_size;
  info.flops_per_step = info.flops_per_token * double(info.tokens_per_step);
  info.optimizer_shards = config.train.zero == 1 && world_size > 1 ? world_size : 1;
  layers::TrainingShape shape;
  shape.micro_batch = config.train.micro_batch;
  shape.seq_len = L;
  shape.bf16_compute = config.train.dtype != layers::ComputeDType::f32;
  shape.optimizer_shards = info.optimizer_shards;
  const layers::MemoryEstimate memory = layers::memory_estimate(m, shape);
  info.weights_bytes = memory.weights_bytes;
  info.gradient_bytes = memory.gradient_bytes;
  info.optimizer_bytes = memory.optimizer_bytes;
  info.activation_bytes = memory.activation_bytes;
  return info;
}

std::string format_info(const Config& config, const ModelInfo& info) {
  const auto& m = config.model.config;
  auto gib = [](double b) { return fmt::format("{:.2f} GiB", b / double(1ull << 30)); };
  std::string layers;
  int64_t n_attn = 0, n_mamba = 0;
  for (layers::MixerKind k : m.layer_mixers()) (k == layers::MixerKind::attention ? n_attn : n_mamba) += 1;
  if (n_mamba) layers += fmt::format("{} mamba", n_mamba);
  if (n_attn) layers += fmt::format("{}{} attention", layers.empty() ? "" : " + ", n_attn);
  std::string out;
  out += fmt::format("model        {} (from preset {}; {} layers: {}; d_model {}; vocab {} padded to {})\n",
                     config.run.name, config.model.preset.empty() ? "none" : config.model.preset, m.n_layer, layers,
                     m.d_model, m.vocab_size, m.padded_vocab_size());
  out += fmt::format("parameters   {} ({:.1f}M); without embeddings {} ({:.1f}M)\n", info.parameters,
                     double(info.parameters) / 1e6, info.non_embedding_parameters,
                     double(info.non_embedding_parameters) / 1e6);
  out += fmt::format("FLOPs/token  {:.4g} (training: forward + backward; 6 x {:.1f}M matmul weights + mixers)\n",
                     info.flops_per_token, double(info.matmul_parameters) / 1e6);
  out += fmt::format("step         {} tokens = {} x {} x {} accumulation; {:.4g} FLOPs\n", info.tokens_per_step,
                     config.train.micro_batch, config.train.seq_len, info.grad_accum, info.flops_per_step);
  out += fmt::format("run          {} steps, {:.4g} tokens, {:.4g} FLOPs\n", config.train.steps,
                     double(info.tokens_per_step) * double(config.train.steps),
                     info.flops_per_step * double(config.train.steps));
  out += fmt::format("memory       {} total (estimate, per GPU, {}): weights {}, gradients {}, AdamW {}{}, "
                     "activations {} (micro-batch {} x {})\n",
                     gib(info.total_bytes()), config.train.dtype == layers::ComputeDType::f32 ? "f32" : "bf16 compute",
                     gib(info.weights_bytes), gib(info.gradient_bytes), gib(info.optimizer_bytes),
                     info.optimizer_shards > 1 ? fmt::format(" (ZeRO-1: 1/{} of the moments)", info.optimizer_shards)
                                               : "",
                     gib(info.activation_bytes), config.train.micro_batch, config.train.seq_len);
  return out;
}

double peak_flops(Device device, layers::ComputeDType compute_dtype) {
  constexpr double kHopperBf16DenseFlops = 989e12, kHopperF32Flops = 67e12;  // H100/H200 SXM
  if (const char* e = std::getenv("COIL_PEAK_TFLOPS")) return std::atof(e) * 1e12;
  if (device.is_cuda()) return compute_dtype == layers::ComputeDType::bf16 ? kHopperBf16DenseFlops : kHopperF32Flops;
  return 0;
}

}  // namespace coil::train
