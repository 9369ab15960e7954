#include "autograd/variable.h"

#include <atomic>

#include "autograd/engine.h"
#include "kernels/accumulate.h"

namespace coil::autograd {

namespace {
std::atomic<uint64_t> next_sequence_nr{0};
thread_local bool grad_enabled = true;

// The node that adds gradients into a leaf. A leaf holds it weakly, so it lives as long as
// some graph that uses the leaf does.
struct AccumulateGrad : Node {
  explicit AccumulateGrad(std::shared_ptr<Variable::Impl> leaf)
      : Node("AccumulateGrad"), leaf(std::move(leaf)) {}

  Grads backward(const Grads& grad_outputs) override {
    const Tensor& g = grad_outputs[0];
    Variable::Impl& v = *leaf;
    if (!v.grad.defined())
      v.grad = sole_owner(g) ? g : g.clone();
    else
      kernels::accumulate(v.grad, g);
    for (auto& hook : v.grad_ready_hooks) hook();
    return {};
  }
  void release_saved() override {}
  bool saves_tensors() const override { return false; }

  std::shared_ptr<Variable::Impl> leaf;
};
}  // namespace

Node::Node(std::string name) : name(std::move(name)), sequence_nr(next_sequence_nr++) {}

void Node::check_seen_versions() const {
  for (const SeenTensor& t : seen) {
    std::shared_ptr<Storage> storage = t.storage.lock();
    if (storage && storage->version != t.version)
      fail("backward through '{}': its {} was modified in place after the op used it (the buffer's version is {}, "
           "it was {} when '{}' ran), so what it saved for backward may no longer be what the forward saw; write "
           "into a copy (clone()) instead, or run backward before the in-place write",
           name, t.what, storage->version, t.version, name);
  }
}

Variable::Variable(Tensor value, bool requires_grad) : impl_(std::make_shared<Impl>()) {
  impl_->value = std::move(value);
  set_requires_grad(requires_grad);
}

static Variable::Impl& checked(const std::shared_ptr<Variable::Impl>& impl) {
  COIL_CHECK(impl, "Variable: use of an undefined variable");
  return *impl;
}

const Tensor& Variable::value() const { return checked(impl_).value; }
const Tensor& Variable::grad() const { return checked(impl_).grad; }

void Variable::set_grad(Tensor grad) {
  Impl& v = checked(impl_);
  check_same_shape("set_grad", v.value, grad);
  check_same_device("set_grad", v.value, grad);
  v.grad = std::move(grad);
  v.grad_bound = true;
}

void Variable::zero_grad() {
  Impl& v = checked(impl_);
  if (v.grad_bound)
    v.grad.zero_();
  else
    v.grad = Tensor();
}

void Variable::clear_grad() {
  checked(impl_).grad = Tensor();
  impl_->grad_bound = false;
}

bool Variable::requires_grad() const {
  const Impl& v = checked(impl_);
  return v.requires_grad || v.grad_fn != nullptr;
}

void Variable::set_requires_grad(bool required) {
  Impl& v = checked(impl_);
  COIL_CHECK(!v.grad_fn || required, "set_requires_grad(false) on the output of '{}': use detach()",
             v.grad_fn->name);
  if (required)
    COIL_CHECK(is_floating(v.value.dtype()), "set_requires_grad: {} is not a floating tensor",
               describe(v.value));
  v.requires_grad = required;
}

const std::shared_ptr<Node>& Variable::grad_fn() const { return checked(impl_).grad_fn; }
int Variable::output_nr() const { return checked(impl_).output_nr; }

void Variable::add_grad_ready_hook(std::function<void()> hook) {
  checked(impl_).grad_ready_hooks.push_back(std::move(hook));
}

Edge Variable::gradient_edge() const {
  Impl& v = checked(impl_);
  if (v.grad_fn) return {v.grad_fn, v.output_nr};
  if (!v.requires_grad) return {};
  std::shared_ptr<Node> acc = v.grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(impl_);
    acc->outputs.push_back({v.value.shape(), v.value.dtype(), v.value.device()});
    v.grad_accumulator = acc;
  }
  return {acc, 0};
}

void Variable::set_history(std::shared_ptr<Node> node, int output_nr) {
  Impl& v = checked(impl_);
  v.grad_fn = std::move(node);
  v.output_nr = output_nr;
}

void Variable::backward(const Tensor& grad_output, bool retain_graph) const {
  const Tensor& value = this->value();
  Tensor grad = grad_output;
  if (!grad.defined()) {
    COIL_CHECK(value.numel() == 1,
               "backward: {} is not a scalar; pass a gradient of its shape, or differentiate a "
               "scalar (a loss)", describe(value));
    grad = Tensor::ones(value.shape(), value.dtype(), value.device());
  }
  run_backward({*this}, {grad}, retain_graph);
}

bool grad_mode_enabled() { return grad_enabled; }
NoGradGuard::NoGradGuard() : previous_(grad_enabled) { grad_enabled = false; }
NoGradGuard::~NoGradGuard() { grad_enabled = previous_; }

bool any_requires_grad(const std::vector<Variable>& inputs) {
  if (!grad_enabled) return false;
  for (const Variable& v : inputs)
    if (v.defined() && v.requires_grad()) return true;
  return false;
}

std::vector<Variable> record(std::shared_ptr<Node> node, const std::vector<Variable>& inputs,
                             const std::vector<Tensor>& outputs) {
  std::vector<Variable> result;
  for (const Tensor& t : outputs) result.emplace_back(t);
  if (!any_requires_grad(inputs)) return result;
  for (const Variable& v : inputs) node->next_edges.push_back(v.defined() ? v.gradient_edge() : Edge{});
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].defined()) node->see(inputs[i].value(), fmt::format("input {}", i));
  for (size_t i = 0; i < outputs.size(); ++i) node->see(outputs[i], fmt::format("output {}", i));
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& t = outputs[i];
    node->outputs.push_back({t.shape(), t.dtype(), t.device()});
    if (is_floating(t.dtype())) result[i].set_history(node, int(i));
  }
  return result;
}

Variable record(std::shared_ptr<Node> node, const std::vector<Variable>& inputs, const Tensor& output) {
  return record(std::move(node), inputs, std::vector<Tensor>{output})[0];
}

Variable record_fn(const char* name, const std::vector<Variable>& inputs, const Tensor& output,
                   BackwardFn backward) {
  if (!any_requires_grad(inputs)) return Variable(output);
  return record(std::make_shared<LambdaNode>(name, std::move(backward)), inputs, output);
}

}  // namespace coil::autograd
