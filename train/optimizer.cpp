#include "train/optimizer.h"

#include <cmath>
#include <map>
#include <set>

#include "optim/adamw.h"

namespace coil::train {

// optim::AdamW (fused, no host sync in step) over the model's parameters: weight decay for
// every parameter but those the model flags no_weight_decay. On a GPU in bf16 the optimizer
// keeps the bf16 compute copies of the weights, rewritten in the same pass as the update.
struct Optimizer::Impl {
  std::unique_ptr<optim::AdamW> adamw;
  std::vector<std::shared_ptr<layers::Parameter>> params;  // in the optimizer's order
  bool copies = false;
};

Optimizer::Optimizer(const layers::LanguageModel& model, const OptimSection& o) : impl_(new Impl) {
  std::vector<std::pair<std::string, optim::Variable>> named;
  std::set<std::string> no_decay;
  std::map<std::string, std::shared_ptr<layers::Parameter>> by_name;
  for (auto& [name, p] : model.named_parameters()) {
    named.emplace_back(name, p->var);
    if (p->no_weight_decay) no_decay.insert(name);
    by_name[name] = p;
  }
  auto groups = optim::groups_by_name(named, o.weight_decay,
                                      [&](const std::string& name) { return no_decay.count(name) > 0; });
  optim::AdamWOptions options;
  options.lr = o.lr;
  options.beta1 = o.betas.at(0);
  options.beta2 = o.betas.at(1);
  options.eps = o.eps;
  impl_->adamw = std::make_unique<optim::AdamW>(groups, options);
  for (size_t i = 0; i < impl_->adamw->size(); ++i) impl_->params.push_back(by_name.at(impl_->adamw->name(i)));
  if (model.device().is_cuda() && model.compute_dtype() == DType::bf16) {
    impl_->adamw->enable_compute_copies();
    impl_->copies = true;
    attach_copies();
  }
}

void Optimizer::attach_copies() {
  for (size_t i = 0; i < impl_->params.size(); ++i) impl_->params[i]->set_compute_copy(impl_->adamw->compute_copy(i));
}

Optimizer::~Optimizer() = default;

void Optimizer::zero_grad() { impl_->adamw->zero_grad(); }

Tensor Optimizer::clip_grad_norm(double max_norm) { return impl_->adamw->clip_grad_norm(max_norm); }

void Optimizer::step(double lr) {
  impl_->adamw->set_lr(lr);
  impl_->adamw->step();
}

// The optimizer names its tensors "exp_avg/<param>"; a checkpoint keeps one flat group, so
// the slash becomes a dot.
NamedTensors Optimizer::state() const {
  NamedTensors out;
  for (auto& [name, t] : impl_->adamw->state_tensors()) {
    std::string n = name;
    auto slash = n.find('/');
    if (slash != std::string::npos) n[slash] = '.';
    out.emplace_back(n, t);
  }
  out.emplace_back("step", Tensor::from_vector(std::vector<int64_t>{impl_->adamw->step_count()}, {1}));
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
  impl_->adamw->load_state_tensors(tensors);
  impl_->adamw->set_step_count(steps);
  if (impl_->copies) {
    // Loading the weights dropped the layers' copies; rewrite them and hand them out again.
    impl_->adamw->refresh_compute_copies();
    attach_copies();
  }
}

}  // namespace coil::train
