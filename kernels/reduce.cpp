#include "kernels/reduce.h"

#include "kernels/dispatch.h"

namespace coil::kernels {
namespace {

void check_input(const char* op, const Tensor& x) {
  check_defined(op, x, "x");
  COIL_CHECK(is_floating(x.dtype()), "{}: expected a floating tensor (f32, f64, bf16), got {}", op,
             describe(x));
}

int64_t resolve_dim(const char* op, const Tensor& x, int64_t dim) {
  int64_t n = x.dim();
  COIL_CHECK(dim >= -n && dim < n, "{}: dim {} out of range for {} ({} dims)", op, dim, describe(x), n);
  return dim < 0 ? dim + n : dim;
}

// out [A, C] = factor * sum over R of x [A, R, C]; out has `out_shape`.
Tensor reduce_arc(const char* op, const Tensor& x, int64_t A, int64_t R, int64_t C, double factor,
                  const Shape& out_shape) {
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  if (out.numel() == 0) return out;
  if (R == 0) {
    out.zero_();
    return out;
  }
  COIL_DISPATCH(op, x.device(), cpu::sum_arc(x, A, R, C, factor, out), cuda::sum_arc(x, A, R, C, factor, out));
  return out;
}

Tensor expand_arc(const char* op, const Tensor& g, int64_t A, int64_t R, int64_t C, double factor,
                  const Shape& shape) {
  Tensor out = Tensor::empty(shape, g.dtype(), g.device());
  if (out.numel() == 0) return out;
  COIL_DISPATCH(op, g.device(), cpu::expand_arc(g, A, R, C, factor, out), cuda::expand_arc(g, A, R, C, factor, out));
  return out;
}

Tensor reduce_dim(const char* op, const Tensor& x, int64_t dim, bool keepdim, bool average) {
  check_input(op, x);
  int64_t d = resolve_dim(op, x, dim);
  const Shape& s = x.shape();
  int64_t A = 1, C = 1, R = s[size_t(d)];
  for (int64_t i = 0; i < d; ++i) A *= s[size_t(i)];
  for (int64_t i = d + 1; i < x.dim(); ++i) C *= s[size_t(i)];
  Shape out_shape = s;
  if (keepdim)
    out_shape[size_t(d)] = 1;
  else
    out_shape.erase(out_shape.begin() + d);
  double factor = average ? (R > 0 ? 1.0 / double(R) : NAN) : 1.0;
  if (average && R == 0) {
    Tensor out = Tensor::full(out_shape, NAN, x.dtype(), x.device());
    return out;
  }
  return reduce_arc(op, x, A, R, C, factor, out_shape);
}

}  // namespace

Tensor sum(const Tensor& x, int64_t dim, bool keepdim) { return reduce_dim("sum", x, dim, keepdim, false); }
Tensor mean(const Tensor& x, int64_t dim, bool keepdim) { return reduce_dim("mean", x, dim, keepdim, true); }

Tensor sum_all(const Tensor& x) {
  check_input("sum_all", x);
  return reduce_arc("sum_all", x, 1, x.numel(), 1, 1.0, {});
}

Tensor mean_all(const Tensor& x) {
  check_input("mean_all", x);
  COIL_CHECK(x.numel() > 0, "mean_all: {} has no elements", describe(x));
  return reduce_arc("mean_all", x, 1, x.numel(), 1, 1.0 / double(x.numel()), {});
}

Tensor sum_to_suffix(const Tensor& x, const Shape& suffix) {
  check_input("sum_to_suffix", x);
  int64_t inner = numel(suffix);
  const Shape& s = x.shape();
  bool ok = suffix.size() <= s.size() && std::equal(suffix.begin(), suffix.end(), s.end() - ptrdiff_t(suffix.size()));
  ok = ok || inner == 1;
  COIL_CHECK(ok, "sum_to_suffix: {} is not a suffix of {}, nor one element", shape_str(suffix), describe(x));
  if (inner == x.numel()) return x.reshape(suffix);
  return reduce_arc("sum_to_suffix", x, 1, inner == 0 ? 0 : x.numel() / inner, inner, 1.0, suffix);
}

Tensor expand_dim(const Tensor& g, const Shape& shape, int64_t dim, double factor) {
  const char* op = "expand_dim";
  check_input(op, g);
  int64_t n = int64_t(shape.size());
  COIL_CHECK(dim >= -n && dim < n, "{}: dim {} out of range for shape {}", op, dim, shape_str(shape));
  int64_t d = dim < 0 ? dim + n : dim;
  int64_t A = 1, C = 1, R = shape[size_t(d)];
  for (int64_t i = 0; i < d; ++i) A *= shape[size_t(i)];
  for (int64_t i = d + 1; i < n; ++i) C *= shape[size_t(i)];
  COIL_CHECK(g.numel() == A * C, "{}: {} cannot be expanded along dim {} to {}", op, describe(g), d,
             shape_str(shape));
  return expand_arc(op, g, A, R, C, factor, shape);
}

Tensor expand_scalar(const Tensor& g, const Shape& shape, double factor) {
  const char* op = "expand_scalar";
  check_input(op, g);
  COIL_CHECK(g.numel() == 1, "{}: {} is not a one-element tensor", op, describe(g));
  return expand_arc(op, g, 1, numel(shape), 1, factor, shape);
}

}  // namespace coil::kernels
