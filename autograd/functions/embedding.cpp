#include "autograd/functions/embedding.h"

#include "kernels/embedding.h"

namespace coil::autograd {

Variable embedding(const Variable& weight, const Tensor& ids) {
  Tensor y = kernels::embedding(weight.value(), ids);
  int64_t vocab = weight.size(0);
  return record_fn("embedding", {weight}, y,
                   [ids, vocab](const Grads& g) { return Grads{kernels::embedding_backward(g[0], ids, vocab)}; });
}

}  // namespace coil::autograd
