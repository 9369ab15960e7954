// `coil info`: the sizes and costs of a config's model and run, from the model's static facts
// (layers/model_facts.h) and the run's shape; and the peak FLOP/s that MFU is measured against.
#pragma once
#include <cstdint>
#include <string>

#include "core/device.h"
#include "train/config.h"

namespace coil::train {

struct ModelInfo {
  int64_t parameters = 0, non_embedding_parameters = 0, matmul_parameters = 0;
  double flops_per_token = 0;   // training (forward + backward)
  double flops_per_step = 0;
  int64_t tokens_per_step = 0, grad_accum = 1;
  double weights_bytes = 0, optimizer_bytes = 0, gradient_bytes = 0, activation_bytes = 0;
  int optimizer_shards = 1;  // train.zero 1 with several ranks: the moments are split over them
  double total_bytes() const { return weights_bytes + optimizer_bytes + gradient_bytes + activation_bytes; }
};
// Computed from the config alone (the model is not built, so any size is instant).
ModelInfo model_info(const Config& config, int world_size = 1);
std::string format_info(const Config& config, const ModelInfo& info);

// Dense peak FLOP/s of one device, the denominator of MFU: COIL_PEAK_TFLOPS (in TFLOP/s) when
// set; on a GPU the H100/H200 SXM figures (989 TFLOP/s bf16, 67 TFLOP/s f32); 0 on the CPU
// (MFU unknown: logged as null).
double peak_flops(Device device, layers::ComputeDType compute_dtype);

}  // namespace coil::train
