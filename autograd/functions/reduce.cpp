#include "autograd/functions/reduce.h"

#include "kernels/reduce.h"

namespace coil::autograd {
namespace {

int64_t resolve(const Variable& x, int64_t dim) {
  int64_t n = x.dim();
  return dim < 0 ? dim + n : dim;  // range checked by the kernel
}

}  // namespace

Variable sum(const Variable& x, int64_t dim, bool keepdim) {
  Tensor y = kernels::sum(x.value(), dim, keepdim);
  Shape shape = x.shape();
  int64_t d = resolve(x, dim);
  return record_fn("sum", {x}, y, [shape, d](const Grads& g) { return Grads{kernels::expand_dim(g[0], shape, d)}; });
}

Variable mean(const Variable& x, int64_t dim, bool keepdim) {
  Tensor y = kernels::mean(x.value(), dim, keepdim);
  Shape shape = x.shape();
  int64_t d = resolve(x, dim);
  double factor = 1.0 / double(shape[size_t(d)]);
  return record_fn("mean", {x}, y, [shape, d, factor](const Grads& g) {
    return Grads{kernels::expand_dim(g[0], shape, d, factor)};
  });
}

Variable sum_all(const Variable& x) {
  Tensor y = kernels::sum_all(x.value());
  Shape shape = x.shape();
  return record_fn("sum_all", {x}, y, [shape](const Grads& g) { return Grads{kernels::expand_scalar(g[0], shape)}; });
}

Variable mean_all(const Variable& x) {
  Tensor y = kernels::mean_all(x.value());
  Shape shape = x.shape();
  double factor = 1.0 / double(x.numel());
  return record_fn("mean_all", {x}, y, [shape, factor](const Grads& g) {
    return Grads{kernels::expand_scalar(g[0], shape, factor)};
  });
}

}  // namespace coil::autograd
