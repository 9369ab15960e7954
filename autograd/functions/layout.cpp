#include "autograd/functions/layout.h"

#include "kernels/layout.h"

namespace coil::autograd {

Variable reshape(const Variable& x, const Shape& shape) {
  Tensor y = x.value().reshape(shape);
  Shape from = x.shape();
  return record_fn("reshape", {x}, y, [from](const Grads& g) { return Grads{g[0].reshape(from)}; });
}

Variable transpose(const Variable& x, int64_t dim0, int64_t dim1) {
  Tensor y = kernels::transpose(x.value(), dim0, dim1);
  return record_fn("transpose", {x}, y,
                   [dim0, dim1](const Grads& g) { return Grads{kernels::transpose(g[0], dim0, dim1)}; });
}

Variable concat(const std::vector<Variable>& xs, int64_t dim) {
  std::vector<Tensor> values;
  std::vector<int64_t> sizes;
  for (const Variable& v : xs) values.push_back(v.value());
  Tensor y = kernels::concat(values, dim);
  int64_t d = dim < 0 ? dim + y.dim() : dim;
  for (const Tensor& t : values) sizes.push_back(t.size(d));
  return record_fn("concat", xs, y, [sizes, d](const Grads& g) { return kernels::split(g[0], sizes, d); });
}

std::vector<Variable> split(const Variable& x, const std::vector<int64_t>& sizes, int64_t dim) {
  std::vector<Tensor> pieces = kernels::split(x.value(), sizes, dim);
  int64_t d = dim < 0 ? dim + x.dim() : dim;
  auto node = std::make_shared<LambdaNode>("split", [d](const Grads& g) {
    return Grads{kernels::concat(std::vector<Tensor>(g.begin(), g.end()), d)};
  });
  return record(node, {x}, pieces);
}

}  // namespace coil::autograd
