// CPU reference for the layout copies: loops over the index space, copying raw elements.
#include <cstring>

#include "kernels/layout.h"

namespace coil::kernels::cpu {

void transpose5(const Tensor& x, int64_t A, int64_t D0, int64_t B, int64_t D1, int64_t C, const Tensor& out) {
  const size_t es = dtype_size(x.dtype());
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t a = 0; a < A; ++a)
    for (int64_t j = 0; j < D1; ++j)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < D0; ++i) {
          int64_t s = (((a * D0 + i) * B + b) * D1 + j) * C;  // x[a, i, b, j, :]
          int64_t d = (((a * D1 + j) * B + b) * D0 + i) * C;  // out[a, j, b, i, :]
          std::memcpy(dst + size_t(d) * es, src + size_t(s) * es, size_t(C) * es);
        }
}

void copy_block(const Tensor& src, int64_t src_ld, int64_t src_col, const Tensor& dst, int64_t dst_ld,
                int64_t dst_col, int64_t rows, int64_t cols) {
  const size_t es = dtype_size(src.dtype());
  const char* s = static_cast<const char*>(src.raw());
  char* d = static_cast<char*>(dst.raw());
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(d + size_t(r * dst_ld + dst_col) * es, s + size_t(r * src_ld + src_col) * es, size_t(cols) * es);
}

}  // namespace coil::kernels::cpu
