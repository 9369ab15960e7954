#include "layers/module.h"

#include <cmath>
#include <set>

#include "autograd/functions/elementwise.h"
#include "core/error.h"

namespace coil::layers {

Variable Parameter::compute(DType dtype) const {
  if (var.dtype() == dtype) return var;
  if (compute_copy.defined() && compute_copy.dtype() == dtype &&
      compute_copy.device() == var.device() && compute_copy.shape() == var.shape()) {
    DType master = var.dtype();
    return autograd::record_fn("parameter_compute_copy", {var}, compute_copy,
                               [master](const autograd::Grads& g) {
                                 return autograd::Grads{g[0].to(master)};
                               });
  }
  return autograd::to_dtype(var, dtype);
}

std::shared_ptr<Parameter> Module::register_parameter(const std::string& name, Tensor value,
                                                      bool no_weight_decay) {
  for (auto& [n, p] : params_)
    COIL_CHECK(n != name, "Module: parameter \"{}\" registered twice", name);
  auto p = std::make_shared<Parameter>();
  p->var = Variable(std::move(value), true);
  p->no_weight_decay = no_weight_decay;
  params_.emplace_back(name, p);
  return p;
}

void Module::register_alias(const std::string& name, std::shared_ptr<Parameter> param) {
  for (auto& [n, p] : params_)
    COIL_CHECK(n != name, "Module: parameter \"{}\" registered twice", name);
  params_.emplace_back(name, std::move(param));
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  for (auto& [n, m] : children_)
    COIL_CHECK(n != name, "Module: submodule \"{}\" registered twice", name);
  module->training_ = training_;
  children_.emplace_back(name, std::move(module));
}

void Module::collect(const std::string& prefix,
                     std::vector<std::pair<std::string, std::shared_ptr<Parameter>>>& out) const {
  for (auto& [n, p] : params_) out.emplace_back(prefix + n, p);
  for (auto& [n, m] : children_) m->collect(prefix + n + ".", out);
}

std::vector<std::pair<std::string, std::shared_ptr<Parameter>>>
Module::named_parameters_with_aliases() const {
  std::vector<std::pair<std::string, std::shared_ptr<Parameter>>> out;
  collect("", out);
  return out;
}

std::vector<std::pair<std::string, std::shared_ptr<Parameter>>> Module::named_parameters() const {
  std::vector<std::pair<std::string, std::shared_ptr<Parameter>>> out;
  std::set<const Parameter*> seen;
  for (auto& np : named_parameters_with_aliases())
    if (seen.insert(np.second.get()).second) out.push_back(np);
  return out;
}

std::vector<Variable> Module::parameters() const {
  std::vector<Variable> out;
  for (auto& [n, p] : named_parameters()) out.push_back(p->var);
  return out;
}

std::vector<std::pair<std::string, Module*>> Module::named_modules() const {
  std::vector<std::pair<std::string, Module*>> out;
  out.emplace_back("", const_cast<Module*>(this));
  for (auto& [n, m] : children_)
    for (auto& [sub, ptr] : m->named_modules())
      out.emplace_back(sub.empty() ? n : n + "." + sub, ptr);
  return out;
}

std::shared_ptr<Parameter> Module::parameter(const std::string& name) const {
  for (auto& [n, p] : named_parameters_with_aliases())
    if (n == name) return p;
  fail("Module: no parameter named \"{}\"", name);
}

int64_t Module::parameter_count() const {
  int64_t n = 0;
  for (auto& [name, p] : named_parameters()) n += p->numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [n, m] : children_) m->train(on);
}

void Module::set_compute_dtype(DType dtype) {
  COIL_CHECK(is_floating(dtype), "Module: compute dtype must be floating, got {}", dtype_name(dtype));
  compute_dtype_ = dtype;
  for (auto& [n, m] : children_) m->set_compute_dtype(dtype);
}

void Module::to(Device device) {
  for (auto& [n, p] : named_parameters()) {
    if (p->var.device() != device) p->var.impl()->value = p->var.value().to(device);
    p->var.clear_grad();
    p->invalidate_compute_copy();
  }
}

void Module::to_param_dtype(DType dtype) {
  COIL_CHECK(is_floating(dtype), "Module: parameter dtype must be floating, got {}", dtype_name(dtype));
  for (auto& [n, p] : named_parameters()) {
    if (p->var.dtype() != dtype) p->var.impl()->value = p->var.value().to(dtype);
    p->var.clear_grad();
    p->invalidate_compute_copy();
  }
}

Device Module::device() const {
  auto ps = named_parameters();
  return ps.empty() ? Device::cpu() : ps.front().second->var.device();
}

StateDict Module::state_dict() const {
  StateDict out;
  for (auto& [n, p] : named_parameters_with_aliases()) out[n] = p->value();
  return out;
}

void Module::load_state_dict(const StateDict& state, bool strict) {
  auto all = named_parameters_with_aliases();
  std::set<const Parameter*> unique_seen;
  std::set<std::string> known;
  // First names of each parameter are required; alias names are optional.
  std::set<std::string> first_names;
  for (auto& [n, p] : all) {
    known.insert(n);
    if (unique_seen.insert(p.get()).second) first_names.insert(n);
  }
  if (strict) {
    for (auto& [n, t] : state)
      if (!known.count(n))
        fail("load_state_dict: unexpected parameter \"{}\" ({}) in the state dict", n, describe(t));
    for (auto& [n, p] : all)
      if (first_names.count(n) && !state.count(n))
        fail("load_state_dict: missing parameter \"{}\" (expected shape {})", n,
             shape_str(p->shape()));
  }
  // Check every shape before changing anything, so a failed load leaves the model intact.
  for (auto& [n, p] : all) {
    auto it = state.find(n);
    if (it == state.end()) continue;
    if (it->second.shape() != p->shape())
      fail("load_state_dict: shape mismatch for \"{}\": the model has {}, the state dict has {}", n,
           shape_str(p->shape()), shape_str(it->second.shape()));
  }
  for (auto& [n, p] : all) {
    auto it = state.find(n);
    if (it == state.end()) continue;
    Tensor dst = p->var.value();  // a handle to the same buffer
    dst.copy_(it->second);
    p->invalidate_compute_copy();
  }
}

void Module::zero_grad() {
  for (auto& [n, p] : named_parameters()) p->var.zero_grad();
}

Variable Module::to_compute(const Variable& x) const {
  return x.dtype() == compute_dtype_ ? x : autograd::to_dtype(x, compute_dtype_);
}

Tensor init_uniform(const Shape& shape, double bound, Generator& gen, DType dtype) {
  return uniform(shape, -bound, bound, gen, dtype, Device::cpu());
}

Tensor init_normal(const Shape& shape, double std, Generator& gen, DType dtype) {
  return randn(shape, gen, dtype, Device::cpu(), 0.0, std);
}

Tensor init_kaiming_uniform(const Shape& shape, int64_t fan_in, Generator& gen, DType dtype) {
  return init_uniform(shape, 1.0 / std::sqrt(double(fan_in)), gen, dtype);
}

}  // namespace coil::layers
