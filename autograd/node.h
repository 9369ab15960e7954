// A node of the backward graph: the backward of one op application. It holds what the op
// saved for backward and one edge per input, to the node that produced that input (or to the
// gradient accumulator of a leaf). Ops with simple backwards record a LambdaNode; fused ops
// (scan, attention, cross-entropy, norms) derive from Node and own their saved state, the way
// a torch.autograd.Function does.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace coil::autograd {

struct Node;

struct Edge {
  std::shared_ptr<Node> node;  // null: this input needs no gradient
  int input_nr = 0;            // which output of `node` the input was
};

// What the engine needs to know of each output: to check the gradients that flow in and to
// give zeros to an output that received none while another output of the node did.
struct OutputMeta {
  Shape shape;
  DType dtype;
  Device device;
};

using Grads = std::vector<Tensor>;

struct Node {
  explicit Node(std::string name);
  virtual ~Node() = default;

  // grad_outputs holds one defined gradient per output. Returns one gradient per input, in
  // the order of next_edges; an entry may be undefined where that input needs none.
  virtual Grads backward(const Grads& grad_outputs) = 0;
  // backward, told for each input the engine's sum of that input's gradient so far where no
  // other tensor views it (else an undefined tensor): a node may add its gradient for such an
  // input into that sum itself (a matrix product with beta = 1 instead of a product and an
  // add kernel) and return none for it. By default the sums are not used.
  virtual Grads backward_into(const Grads& grad_outputs, const Grads& sums) {
    (void)sums;
    return backward(grad_outputs);
  }
  // Frees what the node saved; the engine calls it once the node has run, unless the graph is
  // retained. A later backward through the node is an error.
  virtual void release_saved() = 0;
  // False for nodes that save nothing and may be run by several graphs (leaf accumulators).
  virtual bool saves_tensors() const { return true; }

  bool needs_input_grad(size_t i) const { return i < next_edges.size() && next_edges[i].node; }

  // The tensors the op may have saved for backward, its inputs and outputs, with the version
  // of their buffers when it was recorded (Storage::version). The engine checks them before it
  // runs the node: an in-place write to one of them since is an error, as in libtorch (a
  // little stricter: a node's closure is opaque, so every input and output counts as saved).
  // The buffers are not kept alive for it: one that is gone cannot have been written.
  struct SeenTensor {
    std::weak_ptr<Storage> storage;
    uint64_t version = 0;
    std::string what;  // "input 1", "output 0"
  };
  std::vector<SeenTensor> seen;
  void see(const Tensor& t, std::string what) {
    if (t.defined()) seen.push_back({t.storage(), t.version(), std::move(what)});
  }
  // Raises the error for a tensor written in place since the node was recorded.
  void check_seen_versions() const;

  const std::string name;
  const uint64_t sequence_nr;  // creation order: the engine runs later nodes first
  std::vector<Edge> next_edges;
  std::vector<OutputMeta> outputs;
  bool released = false;
};

using BackwardFn = std::function<Grads(const Grads& grad_outputs)>;

// A node whose backward is a closure; the closure's captures are the saved tensors.
struct LambdaNode : Node {
  LambdaNode(std::string name, BackwardFn fn) : Node(std::move(name)), fn(std::move(fn)) {}
  Grads backward(const Grads& grad_outputs) override { return fn(grad_outputs); }
  void release_saved() override { fn = nullptr; }
  BackwardFn fn;
};

}  // namespace coil::autograd
