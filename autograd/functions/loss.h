#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

// Mean over targets != ignore_index of -log softmax(logits)[target]. logits [N, V], targets
// [N] (i32 or i64). A target outside [0, V) (and not ignore_index) is an error naming it.
// The loss is a f32 scalar; 0 when every target is ignored.
Variable cross_entropy(const Variable& logits, const Tensor& targets, int64_t ignore_index = -100);

// cross_entropy(linear(hidden, weight), targets) without materializing the [N, V] logits of
// the whole batch: rows are processed in chunks, and each chunk's logit gradient is computed
// in the same pass and folded into the gradients of hidden and weight at once.
Variable linear_cross_entropy(const Variable& hidden, const Variable& weight, const Tensor& targets,
                              int64_t ignore_index = -100);

}  // namespace coil::autograd
