#include "kernels/layout.h"

#include <numeric>

#include "kernels/dispatch.h"

namespace coil::kernels {
namespace {

int64_t resolve_dim(const char* op, const Tensor& x, int64_t dim) {
  int64_t n = x.dim();
  COIL_CHECK(dim >= -n && dim < n, "{}: dim {} out of range for {} ({} dims)", op, dim, describe(x), n);
  return dim < 0 ? dim + n : dim;
}

int64_t prod(const Shape& s, int64_t begin, int64_t end) {
  int64_t p = 1;
  for (int64_t i = begin; i < end; ++i) p *= s[size_t(i)];
  return p;
}

void copy_block(const char* op, const Tensor& src, int64_t src_ld, int64_t src_col, const Tensor& dst,
                int64_t dst_ld, int64_t dst_col, int64_t rows, int64_t cols) {
  if (rows == 0 || cols == 0) return;
  COIL_DISPATCH(op, src.device(), cpu::copy_block(src, src_ld, src_col, dst, dst_ld, dst_col, rows, cols),
                cuda::copy_block(src, src_ld, src_col, dst, dst_ld, dst_col, rows, cols));
}

}  // namespace

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1) {
  const char* op = "transpose";
  check_defined(op, x, "x");
  int64_t d0 = resolve_dim(op, x, dim0), d1 = resolve_dim(op, x, dim1);
  if (d0 > d1) std::swap(d0, d1);
  Shape out_shape = x.shape();
  std::swap(out_shape[size_t(d0)], out_shape[size_t(d1)]);
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  if (x.numel() == 0) return out;
  const Shape& s = x.shape();
  if (d0 == d1) {
    out.copy_(x);
    return out;
  }
  int64_t A = prod(s, 0, d0), D0 = s[size_t(d0)], B = prod(s, d0 + 1, d1), D1 = s[size_t(d1)];
  int64_t C = prod(s, d1 + 1, x.dim());
  COIL_DISPATCH(op, x.device(), cpu::transpose5(x, A, D0, B, D1, C, out), cuda::transpose5(x, A, D0, B, D1, C, out));
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  const char* op = "concat";
  COIL_CHECK(!xs.empty(), "concat: no tensors given");
  for (size_t i = 0; i < xs.size(); ++i) check_defined(op, xs[i], "an input");
  const Tensor& first = xs[0];
  int64_t d = resolve_dim(op, first, dim);
  Shape out_shape = first.shape();
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    check_same_device(op, first, x);
    check_same_dtype(op, first, x);
    bool ok = x.dim() == first.dim();
    for (int64_t k = 0; ok && k < x.dim(); ++k)
      ok = k == d || x.shape()[size_t(k)] == first.shape()[size_t(k)];
    COIL_CHECK(ok, "concat: input {} is {} but input 0 is {}: all dims but dim {} must match", i,
               describe(x), describe(first), d);
    total += x.shape()[size_t(d)];
  }
  out_shape[size_t(d)] = total;
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  int64_t rows = prod(out_shape, 0, d), inner = prod(out_shape, d + 1, int64_t(out_shape.size()));
  int64_t dst_ld = total * inner, col = 0;
  for (const Tensor& x : xs) {
    int64_t width = x.shape()[size_t(d)] * inner;
    copy_block(op, x, width, 0, out, dst_ld, col, rows, width);
    col += width;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  const char* op = "split";
  check_defined(op, x, "x");
  int64_t d = resolve_dim(op, x, dim);
  int64_t total = 0;
  for (int64_t s : sizes) {
    COIL_CHECK(s >= 0, "split: negative size {} in sizes", s);
    total += s;
  }
  COIL_CHECK(total == x.shape()[size_t(d)], "split: sizes add up to {}, but dim {} of {} is {}", total, d,
             describe(x), x.shape()[size_t(d)]);
  const Shape& s = x.shape();
  int64_t rows = prod(s, 0, d), inner = prod(s, d + 1, x.dim());
  int64_t src_ld = total * inner, col = 0;
  std::vector<Tensor> out;
  for (int64_t size : sizes) {
    Shape piece = s;
    piece[size_t(d)] = size;
    Tensor t = Tensor::empty(piece, x.dtype(), x.device());
    int64_t width = size * inner;
    copy_block(op, x, src_ld, col, t, width, 0, rows, width);
    col += width;
    out.push_back(t);
  }
  return out;
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  const char* op = "narrow";
  check_defined(op, x, "x");
  int64_t d = resolve_dim(op, x, dim);
  const Shape& s = x.shape();
  COIL_CHECK(start >= 0 && length >= 0 && start + length <= s[size_t(d)],
             "narrow: [{}, {}) is outside dim {} of {} (size {})", start, start + length, d, describe(x), s[size_t(d)]);
  Shape piece = s;
  piece[size_t(d)] = length;
  Tensor out = Tensor::empty(piece, x.dtype(), x.device());
  int64_t rows = prod(s, 0, d), inner = prod(s, d + 1, x.dim());
  copy_block(op, x, s[size_t(d)] * inner, start * inner, out, length * inner, 0, rows, length * inner);
  return out;
}

}  // namespace coil::kernels
