#include "autograd/engine.h"

#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "kernels/accumulate.h"
#include "kernels/elementwise.h"

namespace coil::autograd {
namespace {

struct LaterFirst {
  bool operator()(const Node* a, const Node* b) const { return a->sequence_nr < b->sequence_nr; }
};

// Adds `grad` into slot `slot`, as libtorch's InputBuffer does: the first gradient is kept as
// it is; a later one is summed in place into whichever of the two no other tensor shares (the
// sum is the same either way: a + b rounds as b + a), else into a fresh tensor. Gradients are
// shared where a node passes its incoming gradient on (reshape, add) or keeps it saved.
void add_into(Tensor& slot, Tensor grad) {
  if (!slot.defined()) {
    slot = std::move(grad);
  } else if (sole_owner(slot)) {
    kernels::accumulate(slot, grad);
  } else if (sole_owner(grad)) {
    kernels::accumulate(grad, slot);
    slot = std::move(grad);
  } else {
    slot = kernels::add(slot, grad);
  }
}

// For each input of `node`: the sum of its gradient so far, where no other tensor views it
// (Node::backward_into may add into it), else an undefined tensor. The handles are released
// once backward_into returns.
Grads sums_to_add_into(const Node& node, const std::unordered_map<Node*, Grads>& buffers) {
  Grads sums(node.next_edges.size());
  for (size_t i = 0; i < sums.size(); ++i) {
    const Edge& e = node.next_edges[i];
    if (!e.node) continue;
    auto it = buffers.find(e.node.get());
    if (it == buffers.end() || size_t(e.input_nr) >= it->second.size()) continue;
    const Tensor& sum = it->second[size_t(e.input_nr)];
    if (sum.defined() && sole_owner(sum)) sums[i] = sum;
  }
  return sums;
}

void check_grad(const Node& producer, int output_nr, const Tensor& grad, const std::string& consumer) {
  const OutputMeta& meta = producer.outputs[size_t(output_nr)];
  COIL_CHECK(grad.shape() == meta.shape && grad.dtype() == meta.dtype && grad.device() == meta.device,
             "backward of '{}' produced a gradient {} for an input that is {}{} {} (made by '{}')",
             consumer, describe(grad), dtype_name(meta.dtype), shape_str(meta.shape), meta.device.str(),
             producer.name);
}

}  // namespace

void run_backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grad_roots,
                  bool retain_graph) {
  // Count the consumers of every node reachable from the roots.
  std::unordered_map<Node*, int> dependencies;
  std::unordered_map<Node*, Grads> buffers;
  std::vector<Node*> stack;
  std::unordered_set<Node*> seen;
  for (size_t i = 0; i < roots.size(); ++i) {
    Edge e = roots[i].gradient_edge();
    COIL_CHECK(e.node, "backward: the tensor {} does not require grad and has no grad_fn",
               describe(roots[i].value()));
    check_grad(*e.node, e.input_nr, grad_roots[i], "backward (the gradient passed in)");
    Grads& buffer = buffers[e.node.get()];
    buffer.resize(e.node->outputs.size());
    add_into(buffer[size_t(e.input_nr)], grad_roots[i]);
    if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
  }
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    for (const Edge& e : node->next_edges) {
      if (!e.node) continue;
      dependencies[e.node.get()]++;
      if (seen.insert(e.node.get()).second) stack.push_back(e.node.get());
    }
  }

  std::priority_queue<Node*, std::vector<Node*>, LaterFirst> ready;
  for (auto& [node, grads] : buffers)
    if (dependencies[node] == 0) ready.push(node);

  while (!ready.empty()) {
    Node* node = ready.top();
    ready.pop();
    Grads grads = std::move(buffers[node]);
    buffers.erase(node);
    grads.resize(node->outputs.size());

    bool any_defined = false;
    for (const Tensor& g : grads) any_defined |= g.defined();
    Grads input_grads;
    if (any_defined) {
      COIL_CHECK(!node->released,
                 "backward through '{}' a second time: its saved tensors were freed after the "
                 "first backward; pass retain_graph=true to the first backward to keep them",
                 node->name);
      for (size_t i = 0; i < grads.size(); ++i)
        if (!grads[i].defined()) {
          const OutputMeta& m = node->outputs[i];
          grads[i] = Tensor::zeros(m.shape, m.dtype, m.device);
        }
      node->check_seen_versions();
      input_grads = node->backward_into(grads, sums_to_add_into(*node, buffers));
      COIL_CHECK(input_grads.size() == node->next_edges.size(),
                 "backward of '{}' returned {} gradients for {} inputs", node->name, input_grads.size(),
                 node->next_edges.size());
      if (!retain_graph && node->saves_tensors()) {
        node->release_saved();
        node->released = true;
      }
    }
    input_grads.resize(node->next_edges.size());

    for (size_t i = 0; i < node->next_edges.size(); ++i) {
      const Edge& e = node->next_edges[i];
      if (!e.node) continue;
      Grads& buffer = buffers[e.node.get()];
      buffer.resize(e.node->outputs.size());
      if (input_grads[i].defined()) {
        check_grad(*e.node, e.input_nr, input_grads[i], node->name);
        add_into(buffer[size_t(e.input_nr)], std::move(input_grads[i]));
      }
      if (--dependencies[e.node.get()] == 0) ready.push(e.node.get());
    }
  }
}

}  // namespace coil::autograd
