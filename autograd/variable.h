// Variable: a tensor that takes part in differentiation. It holds its value, the gradient
// accumulated into it (for leaves such as parameters), and the node that produced it.
// Variables are handles: copies share one state, like tensors in PyTorch.
#pragma once
#include <functional>
#include <memory>

#include "autograd/node.h"

namespace coil::autograd {

class Variable {
 public:
  Variable() = default;
  explicit Variable(Tensor value, bool requires_grad = false);

  bool defined() const { return impl_ != nullptr; }
  const Tensor& value() const;
  // The gradient accumulated into this leaf by backward (undefined until then).
  const Tensor& grad() const;
  // Binds the gradient to a given buffer (a view into a flat gradient buffer, say); backward
  // then adds into it in place.
  void set_grad(Tensor grad);
  void zero_grad();   // zeros a bound gradient buffer in place, drops an unbound one
  void clear_grad();  // drops the gradient

  bool requires_grad() const;  // a leaf that asked for it, or the output of a recorded op
  bool is_leaf() const { return grad_fn() == nullptr; }
  void set_requires_grad(bool required);
  const std::shared_ptr<Node>& grad_fn() const;
  int output_nr() const;

  // Differentiates this variable: with no gradient given it must hold one element (a loss).
  void backward(const Tensor& grad_output = Tensor(), bool retain_graph = false) const;
  // The same value, cut from the graph.
  Variable detach() const { return Variable(value(), false); }

  // Called each time backward has finished accumulating a gradient into this leaf (the data
  // parallel trainer starts reducing a bucket from here).
  void add_grad_ready_hook(std::function<void()> hook);

  const Shape& shape() const { return value().shape(); }
  int64_t dim() const { return value().dim(); }
  int64_t size(int64_t d) const { return value().size(d); }
  int64_t numel() const { return value().numel(); }
  DType dtype() const { return value().dtype(); }
  Device device() const { return value().device(); }

  struct Impl;
  const std::shared_ptr<Impl>& impl() const { return impl_; }
  // The edge through which a gradient reaches this variable (empty if none is needed).
  Edge gradient_edge() const;
  // Makes this variable the output number `output_nr` of `node`.
  void set_history(std::shared_ptr<Node> node, int output_nr);

 private:
  std::shared_ptr<Impl> impl_;
};

struct Variable::Impl {
  Tensor value;
  Tensor grad;
  bool grad_bound = false;
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;
  int output_nr = 0;
  std::weak_ptr<Node> grad_accumulator;
  std::vector<std::function<void()>> grad_ready_hooks;
};

// Gradient recording is on by default; a NoGradGuard turns it off in its scope (evaluation,
// generation, optimizer updates). Per thread.
bool grad_mode_enabled();
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// True when grad mode is on and one of the inputs requires a gradient.
bool any_requires_grad(const std::vector<Variable>& inputs);

// Makes `outputs` the outputs of `node` applied to `inputs`, if any input requires a
// gradient (and grad mode is on); otherwise returns them as plain variables and drops node.
std::vector<Variable> record(std::shared_ptr<Node> node, const std::vector<Variable>& inputs,
                             const std::vector<Tensor>& outputs);
Variable record(std::shared_ptr<Node> node, const std::vector<Variable>& inputs, const Tensor& output);
// The usual case: one output, backward as a closure that captures what it saved.
//   Tensor y = kernels::exp(x.value());
//   return record_fn("exp", {x}, y, [y](const Grads& g) { return Grads{kernels::mul(g[0], y)}; });
Variable record_fn(const char* name, const std::vector<Variable>& inputs, const Tensor& output,
                   BackwardFn backward);

}  // namespace coil::autograd
