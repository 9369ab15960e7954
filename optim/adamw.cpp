#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace coil::optim {
namespace {

// Elements per buffer slot, rounded up to 64 bytes so each parameter's view starts aligned.
int64_t padded(int64_t n) { return (n + 15) / 16 * 16; }

}  // namespace

bool default_no_weight_decay(const std::string& name) {
  std::string last = name.substr(name.rfind('.') == std::string::npos ? 0 : name.rfind('.') + 1);
  if (last == "bias" || last == "A_log" || last == "D") return true;
  // Norm weights: backbone.layers.3.norm.weight, backbone.norm_f.weight, ...ln_1.weight
  size_t dot = name.rfind('.');
  std::string owner = dot == std::string::npos ? "" : name.substr(0, dot);
  std::string module = owner.substr(owner.rfind('.') == std::string::npos ? 0 : owner.rfind('.') + 1);
  return last == "weight" && (module.find("norm") != std::string::npos || module.rfind("ln", 0) == 0);
}

std::vector<ParamGroup> groups_by_name(const std::vector<std::pair<std::string, Variable>>& named,
                                       double weight_decay,
                                       const std::function<bool(const std::string&)>& no_decay) {
  ParamGroup decay{"decay", {}, {}, weight_decay}, none{"no_decay", {}, {}, 0.0};
  for (const auto& [name, var] : named) {
    ParamGroup& g = no_decay(name) ? none : decay;
    g.names.push_back(name);
    g.params.push_back(var);
  }
  return {decay, none};
}

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions options) : options_(options) {
  COIL_CHECK(options.lr >= 0 && options.eps >= 0 && options.beta1 >= 0 && options.beta1 < 1 &&
                 options.beta2 >= 0 && options.beta2 < 1,
             "AdamW: lr {} and eps {} must be >= 0 and betas ({}, {}) in [0, 1)", options.lr, options.eps,
             options.beta1, options.beta2);
  std::map<const Variable::Impl*, std::string> seen;
  for (const ParamGroup& g : groups) {
    COIL_CHECK(g.names.empty() || g.names.size() == g.params.size(),
               "AdamW: group '{}' has {} names for {} parameters", g.name, g.names.size(), g.params.size());
    COIL_CHECK(g.weight_decay >= 0, "AdamW: group '{}' has a negative weight decay {}", g.name, g.weight_decay);
    for (size_t i = 0; i < g.params.size(); ++i) {
      const Variable& p = g.params[i];
      std::string name = g.names.empty() ? g.name + "." + std::to_string(i) : g.names[i];
      COIL_CHECK(p.defined() && p.is_leaf() && p.requires_grad(),
                 "AdamW: parameter '{}' must be a leaf that requires a gradient", name);
      COIL_CHECK(p.dtype() == DType::f32, "AdamW: parameter '{}' is {}; the optimizer keeps fp32 master weights",
                 name, describe(p.value()));
      auto [it, fresh] = seen.emplace(p.impl().get(), name);
      COIL_CHECK(fresh, "AdamW: parameter '{}' is the same as '{}' (a tied parameter belongs in one group once)",
                 name, it->second);
      if (params_.empty()) device_ = p.device();
      COIL_CHECK(p.device() == device_, "AdamW: parameter '{}' is on {}, the others on {}", name,
                 p.device().str(), device_.str());
      params_.push_back(p);
      names_.push_back(name);
      weight_decay_.push_back(g.weight_decay);
    }
  }
  int64_t total = 0;
  for (const Variable& p : params_) total += padded(p.numel());
  m_flat_ = Tensor::zeros({total}, DType::f32, device_);
  v_flat_ = Tensor::zeros({total}, DType::f32, device_);
  int64_t offset = 0;
  for (const Variable& p : params_) {
    m_.push_back(m_flat_.view_bytes(size_t(offset) * 4, p.shape(), DType::f32));
    v_.push_back(v_flat_.view_bytes(size_t(offset) * 4, p.shape(), DType::f32));
    offset += padded(p.numel());
  }
  lr_tensor_ = Tensor::full({}, options_.lr, DType::f32, device_);
  bind_grads();
  rebuild_plan();
}

// Every parameter gets a bound gradient buffer: its own if one is bound already, else a view
// of the optimizer's flat buffer (holding the gradient accumulated so far, if any).
void AdamW::bind_grads() {
  int64_t need = 0;
  for (const Variable& p : params_)
    if (!p.impl()->grad_bound) need += padded(p.numel());
  if (need == 0) return;
  grad_flat_ = Tensor::zeros({need}, DType::f32, device_);
  int64_t offset = 0;
  for (Variable& p : params_) {
    if (p.impl()->grad_bound) continue;
    Tensor view = grad_flat_.view_bytes(size_t(offset) * 4, p.shape(), DType::f32);
    if (p.grad().defined()) view.copy_(p.grad());
    p.set_grad(view);
    offset += padded(p.numel());
  }
}

bool AdamW::plan_is_current() const {
  for (size_t i = 0; i < params_.size(); ++i) {
    const Tensor& g = params_[i].grad();
    const kernels::AdamWSlot& s = plan_.slots[i];
    if (!params_[i].impl()->grad_bound || !g.defined() || g.raw() != s.grad.raw() ||
        params_[i].value().raw() != s.param.raw() ||
        (i < copies_.size()) != s.copy.defined())
      return false;
  }
  return true;
}

void AdamW::rebuild_plan() {
  std::vector<kernels::AdamWSlot> slots;
  for (size_t i = 0; i < params_.size(); ++i) {
    kernels::AdamWSlot s;
    s.param = params_[i].value();
    s.grad = params_[i].grad();
    COIL_CHECK(s.grad.defined() && (s.grad.dtype() == DType::f32 || s.grad.dtype() == DType::bf16),
               "AdamW: the gradient of '{}' is {}", names_[i], describe(s.grad));
    s.m = m_[i];
    s.v = v_[i];
    if (i < copies_.size()) s.copy = copies_[i];
    s.weight_decay = weight_decay_[i];
    slots.push_back(s);
  }
  plan_ = kernels::make_multi_tensor_plan(std::move(slots));
}

void AdamW::step() {
  if (!plan_is_current()) {
    bind_grads();
    rebuild_plan();
  }
  ++step_;
  kernels::adamw_step(plan_, lr_tensor_, pending_clip_, {options_.beta1, options_.beta2, options_.eps}, step_);
  pending_clip_ = Tensor();
}

// One fill of the flat buffer when it holds every gradient (the usual case: ~240 parameters of
// a 130M Mamba, one launch instead of one each), else one fill a parameter.
void AdamW::zero_grad() {
  const bool all_in_flat = grad_flat_.defined() && std::all_of(params_.begin(), params_.end(), [&](const Variable& p) {
                             return p.impl()->grad_bound && p.grad().same_buffer(grad_flat_);
                           });
  if (all_in_flat) return grad_flat_.zero_();
  for (Variable& p : params_) p.zero_grad();
}

Tensor AdamW::clip_grad_norm(double max_norm) {
  if (!plan_is_current()) {
    bind_grads();
    rebuild_plan();
  }
  kernels::GradNorm n = kernels::grad_norm(plan_, max_norm);
  pending_clip_ = max_norm > 0 ? n.clip : Tensor();
  return n.norm;
}

void AdamW::set_lr(double lr) {
  COIL_CHECK(lr >= 0 && std::isfinite(lr), "AdamW: the learning rate must be finite and >= 0, got {}", lr);
  options_.lr = lr;
  lr_tensor_.fill_(lr);
}

void AdamW::enable_compute_copies() {
  if (!copies_.empty()) return;
  for (const Variable& p : params_) copies_.push_back(p.value().to(DType::bf16));
  rebuild_plan();
}

void AdamW::refresh_compute_copies() {
  for (size_t i = 0; i < copies_.size(); ++i) copies_[i].copy_(params_[i].value());
}

std::vector<std::pair<std::string, Tensor>> AdamW::state_tensors() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < params_.size(); ++i) out.emplace_back("exp_avg/" + names_[i], m_[i]);
  for (size_t i = 0; i < params_.size(); ++i) out.emplace_back("exp_avg_sq/" + names_[i], v_[i]);
  return out;
}

void AdamW::load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& state) {
  std::map<std::string, Tensor> by_name(state.begin(), state.end());
  for (size_t i = 0; i < params_.size(); ++i)
    for (auto [prefix, dst] : {std::pair<std::string, Tensor>{"exp_avg/", m_[i]}, {"exp_avg_sq/", v_[i]}}) {
      auto it = by_name.find(prefix + names_[i]);
      COIL_CHECK(it != by_name.end(), "AdamW: the optimizer state has no '{}{}'", prefix, names_[i]);
      COIL_CHECK(it->second.shape() == dst.shape(), "AdamW: '{}{}' is {} in the state but {} here", prefix,
                 names_[i], describe(it->second), describe(dst));
      dst.copy_(it->second);
    }
}

}  // namespace coil::optim
