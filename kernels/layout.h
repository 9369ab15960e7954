// Layout changes that copy: transpose of two dims, concat, split and narrow along a dim. They move
// raw elements, so they take every dtype (f32, f64, bf16, i32, i64) on both devices.
// (reshape is a free view: Tensor::reshape.)
#pragma once
#include <vector>

#include "core/tensor.h"

namespace coil::kernels {

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1);
// All inputs share dtype, device and every dim but `dim`.
Tensor concat(const std::vector<Tensor>& xs, int64_t dim);
// Pieces of the given sizes along `dim` (they must add up to x.size(dim)); each a new tensor.
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim);
// Entries [start, start + length) along `dim`, as a new tensor.
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);

namespace cpu {
// x viewed as [A, D0, B, D1, C] -> out [A, D1, B, D0, C]
void transpose5(const Tensor& x, int64_t A, int64_t D0, int64_t B, int64_t D1, int64_t C, const Tensor& out);
// dst[r, dst_col + j] = src[r, src_col + j] for r < rows, j < cols; src rows are src_ld
// elements long, dst rows dst_ld elements.
void copy_block(const Tensor& src, int64_t src_ld, int64_t src_col, const Tensor& dst, int64_t dst_ld,
                int64_t dst_col, int64_t rows, int64_t cols);
}  // namespace cpu
namespace cuda {
void transpose5(const Tensor& x, int64_t A, int64_t D0, int64_t B, int64_t D1, int64_t C, const Tensor& out);
void copy_block(const Tensor& src, int64_t src_ld, int64_t src_col, const Tensor& dst, int64_t dst_ld,
                int64_t dst_col, int64_t rows, int64_t cols);
}  // namespace cuda

}  // namespace coil::kernels
