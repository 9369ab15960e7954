#include "train/optimizer.h"

#include <cmath>
#include <map>
#include <set>

#include "dist/zero.h"
#include "optim/adamw.h"

namespace coil::train {

// optim::AdamW (fused, no host sync in step) over the model's parameters, or its sharded form
// (ZeRO-1): weight decay for every parameter but those the model flags no_weight_decay. On a
// GPU in bf16 the optimizer keeps the bf16 compute copies of the weights and hands them to the
// layers.
struct Optimizer::Impl {
  std::unique_ptr<optim::AdamW> adamw;
  std::unique_ptr<dist::ShardedAdamW> sharded;
  std::vector<std::shared_ptr<layers::Parameter>> params;  // in the optimizer's order
  bool copies = false;
  size_t moment_bytes = 0;  // unsharded: both moments of every parameter
};

namespace {
optim::AdamWOptions adamw_options(const OptimSection& o) {
  optim::AdamWOptions options;
  options.lr = o.lr;
  options.beta1 = o.betas.at(0);
  options.beta2 = o.betas.at(1);
  options.eps = o.eps;
  return options;
}
}  // namespace

Optimizer::Optimizer(const layers::LanguageModel& model, const OptimSection& o, ZeroSharding zero) : impl_(new Impl) {
  impl_->copies = model.device().is_cuda() && model.compute_dtype() == DType::bf16;
  if (zero.reducer) {
    COIL_CHECK(zero.comm, "optimizer: ZeRO-1 needs the ranks' communicator");
    std::vector<std::string> names;
    std::vector<optim::Variable> vars;
    std::vector<double> decay;
    for (auto& [name, p] : model.named_parameters()) {
      names.push_back(name);
      vars.push_back(p->var);
      decay.push_back(p->no_weight_decay ? 0.0 : o.weight_decay);
      impl_->params.push_back(p);
    }
    impl_->sharded = std::make_unique<dist::ShardedAdamW>(names, vars, decay, *zero.reducer, *zero.comm,
                                                          adamw_options(o), impl_->copies);
  } else {
    std::vector<std::pair<std::string, optim::Variable>> named;
    std::set<std::string> no_decay;
    std::map<std::string, std::shared_ptr<layers::Parameter>> by_name;
    for (auto& [name, p] : model.named_parameters()) {
      named.emplace_back(name, p->var);
      if (p->no_weight_decay) no_decay.insert(name);
      by_name[name] = p;
      impl_->moment_bytes += 2 * size_t(p->numel()) * sizeof(float);
    }
    auto groups = optim::groups_by_name(named, o.weight_decay,
                                        [&](const std::string& name) { return no_decay.count(name) > 0; });
    impl_->adamw = std::make_unique<optim::AdamW>(groups, adamw_options(o));
    for (size_t i = 0; i < impl_->adamw->size(); ++i) impl_->params.push_back(by_name.at(impl_->adamw->name(i)));
    if (impl_->copies) impl_->adamw->enable_compute_copies();
  }
  if (impl_->copies) attach_copies();
}

void Optimizer::attach_copies() {
  for (size_t i = 0; i < impl_->params.size(); ++i)
    impl_->params[i]->set_compute_copy(impl_->sharded ? impl_->sharded->compute_copy(i)
                                                      : impl_->adamw->compute_copy(i));
}

Optimizer::~Optimizer() = default;

void Optimizer::zero_grad() {
  if (impl_->sharded) return impl_->sharded->zero_grad();
  impl_->adamw->zero_grad();
}

Tensor Optimizer::clip_grad_norm(double max_norm) {
  if (impl_->sharded) return impl_->sharded->clip_grad_norm(max_norm);
  return impl_->adamw->clip_grad_norm(max_norm);
}

void Optimizer::step(double lr) {
  if (impl_->sharded) {
    impl_->sharded->set_lr(lr);
    return impl_->sharded->step();
  }
  impl_->adamw->set_lr(lr);
  impl_->adamw->step();
}

size_t Optimizer::state_bytes() const {
  return impl_->sharded ? impl_->sharded->state_bytes() : impl_->moment_bytes;
}

// The optimizer names its tensors "exp_avg/<param>"; a checkpoint keeps one flat group, so
// the slash becomes a dot.
NamedTensors Optimizer::state() const {
  NamedTensors out;
  auto tensors = impl_->sharded ? impl_->sharded->state_tensors() : impl_->adamw->state_tensors();
  for (auto& [name, t] : tensors) {
    std::string n = name;
    auto slash = n.find('/');
    if (slash != std::string::npos) n[slash] = '.';
    out.emplace_back(n, t);
  }
  int64_t steps = impl_->sharded ? impl_->sharded->step_count() : impl_->adamw->step_count();
  out.emplace_back("step", Tensor::from_vector(std::vector<int64_t>{steps}, {1}));
  return out;
}

void Optimizer::load_state(const NamedTensors& state) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  int64_t steps = -1;
  for (auto& [name, t] : state) {
    if (name == "step") {
      steps = t.to_vector<int64_t>().at(0);
      continue;
    }
    std::string n = name;
    for (const char* prefix : {"exp_avg_sq.", "exp_avg."})
      if (n.rfind(prefix, 0) == 0) {
        n[std::string(prefix).size() - 1] = '/';
        break;
      }
    tensors.emplace_back(n, t);
  }
  COIL_CHECK(steps >= 0, "optimizer: the checkpoint has no 'step'");
  if (impl_->sharded) {
    impl_->sharded->load_state_tensors(tensors);
    impl_->sharded->set_step_count(steps);
  } else {
    impl_->adamw->load_state_tensors(tensors);
    impl_->adamw->set_step_count(steps);
  }
  if (impl_->copies) {
    // Loading the weights dropped the layers' copies; rewrite them and hand them out again.
    if (impl_->sharded)
      impl_->sharded->refresh_compute_copies();
    else
      impl_->adamw->refresh_compute_copies();
    attach_copies();
  }
}

}  // namespace coil::train
