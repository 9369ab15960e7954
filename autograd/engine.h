// The backward engine. From the roots it finds every node that leads to them and counts, for
// each node, the edges that point at it (its consumers). It then runs nodes from a ready
// queue, later-created first: a node is ready once all its consumers have run and handed
// it their gradients, which the engine sums per output (in place where it can, as libtorch
// does; a node may also add into the sum itself, Node::backward_into). Saved tensors are freed
// as each node finishes unless the graph is retained.
#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

void run_backward(const std::vector<Variable>& roots, const std::vector<Tensor>& grad_roots,
                  bool retain_graph);

// Whether no other tensor views t's buffer: a gradient the engine may then sum into in place,
// or a leaf take over without a copy.
inline bool sole_owner(const Tensor& t) { return t.storage().use_count() == 1; }

}  // namespace coil::autograd
