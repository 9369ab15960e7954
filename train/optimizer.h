// The trainer's view of the optimizer: AdamW with decoupled weight decay (none for parameters
// flagged no_weight_decay: norms, biases, A_log, D), clipping by the global gradient norm, and
// the state a checkpoint stores ("exp_avg.<param>", "exp_avg_sq.<param>", "step"): always the
// whole state, so a checkpoint resumes on any number of ranks, with or without ZeRO-1.
#pragma once
#include <memory>

#include "layers/model.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace coil::dist {
class Collectives;
class GradReducer;
}  // namespace coil::dist

namespace coil::train {

// ZeRO-1 (dist/zero.h): AdamW's moments sharded over the ranks of `comm`. The reducer holds
// the model's gradients (its parameters in named_parameters() order, its buckets padded for
// comm->world_size() shards) and reduce-scatters them.
struct ZeroSharding {
  const dist::GradReducer* reducer = nullptr;
  dist::Collectives* comm = nullptr;
};

class Optimizer {
 public:
  Optimizer(const layers::LanguageModel& model, const OptimSection& options, ZeroSharding zero = {});
  ~Optimizer();
  // The global L2 norm of all gradients before clipping, an f32 scalar on the parameters'
  // device (no host sync: the trainer reads it in its one sync of the step); the next step()
  // scales the gradients to max_norm when above it (max_norm 0: no clipping). Parameters
  // without a gradient count as zero.
  Tensor clip_grad_norm(double max_norm);
  void step(double lr);
  void zero_grad();
  // With ZeRO-1 a collective: every rank calls it, and every rank gets the whole state.
  NamedTensors state() const;
  // Names and shapes must match. Call after the weights were loaded into the model.
  void load_state(const NamedTensors& state);
  // The bytes of optimizer state (both moments) this rank holds.
  size_t state_bytes() const;

 private:
  void attach_copies();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace coil::train
