// The static facts of a model config, computed without building the model (so any size is
// instant): the parameters' names and shapes, their counts, the training FLOPs per token and
// a memory estimate. `coil info` (train/info.h), the trainer's MFU and `coil report` all use
// these, and tests hold them against a built LanguageModel.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/shape.h"
#include "layers/model_config.h"

namespace coil::layers {

// The parameter names and shapes, in the order LanguageModel::named_parameters() lists them.
std::vector<std::pair<std::string, Shape>> parameter_shapes(const ModelConfig& config);

struct ParameterCounts {
  int64_t total = 0;
  int64_t non_embedding = 0;  // minus token and position embeddings and an untied head (Kaplan's N)
  // Weights that take part in matrix products, the head included (tied or not; the conv1d
  // weights count too: each is used once per token, like a matmul weight).
  int64_t matmul = 0;
};
ParameterCounts parameter_counts(const ModelConfig& config);

// Training FLOPs per token (forward + backward): 6 * matmul parameters
//   + 12 * d_model * context per attention layer   (QK^T and AV, Kaplan/Chinchilla; context is
//     seq_len, or the window when it is shorter)
//   + 3 * (9 * d_inner * d_state + 2 * d_inner) per Mamba layer   (the scan; mamba_ssm's
//     selective_scan_flop_jit: 9 BLDN, + BDL for D and for z, forward; backward ~2x)
double training_flops_per_token(const ModelConfig& config, int64_t seq_len);

// Memory per GPU for training: fp32 master weights (+ a bf16 compute copy), fp32 gradients,
// AdamW's two fp32 moments (split over `optimizer_shards` ranks with ZeRO-1), and the
// activations one micro-batch saves for backward. The activation figure is an estimate: per
// token and layer, the tensors a layer saves (in the compute dtype; the residual stream and
// norm statistics in fp32), not counting the allocator's slack.
struct MemoryEstimate {
  double weights_bytes = 0, gradient_bytes = 0, optimizer_bytes = 0, activation_bytes = 0;
  double total_bytes() const { return weights_bytes + optimizer_bytes + gradient_bytes + activation_bytes; }
};
struct TrainingShape {
  int64_t micro_batch = 1, seq_len = 1;
  bool bf16_compute = true;  // false: f32 compute
  int optimizer_shards = 1;
};
MemoryEstimate memory_estimate(const ModelConfig& config, const TrainingShape& shape);

}  // namespace coil::layers
