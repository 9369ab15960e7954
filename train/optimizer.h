// The trainer's view of the optimizer: AdamW with decoupled weight decay (none for parameters
// flagged no_weight_decay: norms, biases, A_log, D), clipping by the global gradient norm, and
// the state a checkpoint stores ("exp_avg.<param>", "exp_avg_sq.<param>", "step").
#pragma once
#include <memory>

#include "layers/model.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace coil::train {

class Optimizer {
 public:
  Optimizer(const layers::LanguageModel& model, const OptimSection& options);
  ~Optimizer();
  // The global L2 norm of all gradients before clipping, an f32 scalar on the parameters'
  // device (no host sync: the trainer reads it in its one sync of the step); the next step()
  // scales the gradients to max_norm when above it (max_norm 0: no clipping). Parameters
  // without a gradient count as zero.
  Tensor clip_grad_norm(double max_norm);
  void step(double lr);
  void zero_grad();
  NamedTensors state() const;
  // Names and shapes must match. Call after the weights were loaded into the model.
  void load_state(const NamedTensors& state);

 private:
  void attach_copies();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace coil::train
