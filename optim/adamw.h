// AdamW over a list of parameters (autograd::Variable leaves with fp32 master values), with
// parameter groups, one fused multi-tensor launch per step on a GPU (kernels/adamw.h).
//
//   std::vector<optim::ParamGroup> groups = optim::groups_by_name(named, /*weight_decay=*/0.1);
//   optim::AdamW opt(groups, {.lr = 6e-4, .beta2 = 0.95});
//   ... loss.backward();
//   Tensor norm = opt.clip_grad_norm(1.0);   // on the device; applied inside the next step
//   opt.set_lr(schedule(step)); opt.step(); opt.zero_grad();
//
// Gradients: at construction every parameter's gradient is bound to a buffer (its current
// bound buffer if it has one, e.g. the data-parallel reducer's flat buffer; else one
// flat f32 buffer of the optimizer), so backward accumulates in place and the device table
// of pointers stays valid. A parameter whose gradient buffer was rebound later is noticed at
// the next step (the table is rebuilt). No host sync anywhere in step().
#pragma once
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "kernels/adamw.h"
#include "optim/defaults.h"

namespace coil::optim {

using autograd::Variable;

struct ParamGroup {
  std::string name;                  // "decay", "no_decay", ...
  std::vector<std::string> names;    // one per parameter (checkpoint keys); empty: "<group>.<i>"
  std::vector<Variable> params;
  double weight_decay = 0.0;
};

// The usual split: no weight decay for biases, norm weights, A_log and D (by name), weight
// decay for everything else. Parameters keep their order within each group.
bool default_no_weight_decay(const std::string& name);
std::vector<ParamGroup> groups_by_name(const std::vector<std::pair<std::string, Variable>>& named,
                                       double weight_decay,
                                       const std::function<bool(const std::string&)>& no_decay =
                                           default_no_weight_decay);

struct AdamWOptions {
  double lr = kDefaultLr;
  double beta1 = kDefaultBeta1;
  double beta2 = kDefaultBeta2;
  double eps = kDefaultEps;
};

class AdamW {
 public:
  AdamW(std::vector<ParamGroup> groups, AdamWOptions options = {});

  // One update of every parameter with the current learning rate (and the clip coefficient
  // of the last clip_grad_norm since the previous step, if any).
  void step();
  // Zeros the gradient buffers in place.
  void zero_grad();

  // The global L2 norm of the gradients (f32 scalar on the parameters' device) and, for
  // max_norm > 0, a clip coefficient min(1, max_norm / norm) that the next step() applies.
  Tensor clip_grad_norm(double max_norm);

  void set_lr(double lr);
  double lr() const { return options_.lr; }
  const AdamWOptions& options() const { return options_; }

  // bf16 copies of the parameters, rewritten by every step in the same pass (a layer hands
  // them out as its compute weights: layers::Parameter::set_compute_copy). Made on request.
  void enable_compute_copies();
  const Tensor& compute_copy(size_t i) const { return copies_.at(i); }
  // Rewrites the copies from the master values (after a checkpoint was loaded into them).
  void refresh_compute_copies();

  // State, for checkpoints. Parameter i in group order; exp_avg/exp_avg_sq are views of the
  // optimizer's buffers (copy_ into them to restore).
  size_t size() const { return params_.size(); }
  const std::string& name(size_t i) const { return names_.at(i); }
  const Variable& param(size_t i) const { return params_.at(i); }
  const Tensor& exp_avg(size_t i) const { return m_.at(i); }
  const Tensor& exp_avg_sq(size_t i) const { return v_.at(i); }
  int64_t step_count() const { return step_; }
  void set_step_count(int64_t steps) { step_ = steps; }
  // "exp_avg/<name>" and "exp_avg_sq/<name>" for every parameter (the checkpoint's /optim).
  std::vector<std::pair<std::string, Tensor>> state_tensors() const;
  // Copies those tensors back in (from any device); every name must be present with its shape.
  void load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& state);

 private:
  void bind_grads();
  bool plan_is_current() const;
  void rebuild_plan();

  AdamWOptions options_;
  std::vector<Variable> params_;
  std::vector<std::string> names_;
  std::vector<double> weight_decay_;
  Device device_;
  Tensor m_flat_, v_flat_, grad_flat_;
  std::vector<Tensor> m_, v_, copies_;
  kernels::MultiTensorPlan plan_;
  Tensor lr_tensor_;   // f32 scalar on the device, rewritten by set_lr (a fill kernel: no sync)
  Tensor pending_clip_;
  int64_t step_ = 0;
};

}  // namespace coil::optim
