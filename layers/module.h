// Module: owns named parameters and named submodules, like torch.nn.Module.
//
// - Names are hierarchical, joined with '.', in registration order (the order of the
//   reference implementation's state dict, so checkpoints convert one to one).
// - A Parameter is an autograd::Variable holding the master value (fp32; f64 for gradient
//   checks) with requires_grad, plus a no_weight_decay flag for the optimizer's groups and a
//   seam for a compute-dtype copy (see Parameter::compute).
// - Tied parameters (lm_head.weight = backbone.embedding.weight) are one Parameter object
//   registered under two names. named_parameters() lists it once, under its first name
//   (PyTorch's remove_duplicate); state_dict() lists every name, aliases included, as
//   PyTorch's state_dict does, so a reference checkpoint maps key for key. load_state_dict
//   accepts a checkpoint with or without the alias keys.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "autograd/variable.h"
#include "core/random.h"

namespace coil::layers {

using autograd::Variable;

struct Parameter {
  Variable var;  // master value, requires_grad
  bool no_weight_decay = false;

  // Seam for the fused optimizer: a copy of the value in the compute dtype (bf16) that the
  // optimizer may write in the same pass as its update. While it is set, compute() hands it
  // out instead of casting the master again; its gradient flows to the master, cast back.
  // Whoever changes the master value without rewriting the copy must call
  // invalidate_compute_copy() (load_state_dict and Module::to do).
  Tensor compute_copy;
  void set_compute_copy(Tensor copy) { compute_copy = std::move(copy); }
  void invalidate_compute_copy() { compute_copy = Tensor(); }

  // The value to compute with in `dtype`: the master itself when the dtypes agree, else the
  // compute copy when one is set for that dtype and device, else autograd::to_dtype(master).
  Variable compute(DType dtype) const;

  const Tensor& value() const { return var.value(); }
  const Shape& shape() const { return var.shape(); }
  int64_t numel() const { return var.numel(); }
};

using StateDict = std::map<std::string, Tensor>;

class Module {
 public:
  Module() = default;
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Unique parameters, each under its first name, in registration order.
  std::vector<std::pair<std::string, std::shared_ptr<Parameter>>> named_parameters() const;
  // Every name, aliases of tied parameters included.
  std::vector<std::pair<std::string, std::shared_ptr<Parameter>>> named_parameters_with_aliases() const;
  std::vector<Variable> parameters() const;
  std::vector<std::pair<std::string, Module*>> named_modules() const;  // "" is this module
  std::shared_ptr<Parameter> parameter(const std::string& name) const;  // error if unknown
  int64_t parameter_count() const;  // unique parameters' elements

  void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  // The dtype matrix products and activations compute in (bf16 on the GPU by default);
  // parameters stay in their master dtype. Applies to every submodule.
  void set_compute_dtype(DType dtype);
  DType compute_dtype() const { return compute_dtype_; }

  // Moves every parameter (in place: the Variables keep their identity) and drops gradients
  // and compute copies. Call before building the optimizer.
  virtual void to(Device device);
  // Converts every parameter's master value to dtype (f64 for gradient checks).
  void to_param_dtype(DType dtype);
  Device device() const;

  StateDict state_dict() const;
  // Copies values in by name (converting dtype and device). Strict: a missing or unexpected
  // name, or a shape mismatch, is an error naming it (and both shapes). Alias keys of tied
  // parameters may be present or absent.
  void load_state_dict(const StateDict& state, bool strict = true);
  void zero_grad();

 protected:
  std::shared_ptr<Parameter> register_parameter(const std::string& name, Tensor value,
                                                bool no_weight_decay = false);
  // Registers an existing parameter under another name (weight tying).
  void register_alias(const std::string& name, std::shared_ptr<Parameter> param);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }
  // Casts an activation to the compute dtype (no-op when it already is).
  Variable to_compute(const Variable& x) const;

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void collect(const std::string& prefix,
               std::vector<std::pair<std::string, std::shared_ptr<Parameter>>>& out) const;

  std::vector<std::pair<std::string, std::shared_ptr<Parameter>>> params_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  DType compute_dtype_ = DType::f32;
};

// Initializers on the host from a Generator (so CPU and GPU initialize identically).
Tensor init_uniform(const Shape& shape, double bound, Generator& gen, DType dtype = DType::f32);
Tensor init_normal(const Shape& shape, double std, Generator& gen, DType dtype = DType::f32);
// PyTorch's default for Linear and Conv weights (kaiming_uniform, a = sqrt(5)): U(+-1/sqrt(fan_in)).
Tensor init_kaiming_uniform(const Shape& shape, int64_t fan_in, Generator& gen,
                            DType dtype = DType::f32);

}  // namespace coil::layers
