// Sums and means over one dim, over everything, and over leading dims (the backward of a
// broadcast). Every reduction views its input as [A, R, C] and sums over R (A: the dims
// before, C: the dims after); results keep the input's dtype and are accumulated in fp32 on
// the GPU (fp64 on the CPU reference). The GPU reductions are deterministic: a fixed split
// of R into segments, partial sums in fp32, then a fixed-order sum of the partials.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

Tensor sum(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor mean(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor sum_all(const Tensor& x);   // shape []
Tensor mean_all(const Tensor& x);  // shape []
// Sums x over its leading dims down to `suffix` (a suffix of x's shape, or [] / [1] for a
// sum of everything): the gradient of the operand that a binary op broadcast.
Tensor sum_to_suffix(const Tensor& x, const Shape& suffix);

// out [A, R, C] (as `shape`) = factor * g [A, C] repeated along R: the backward of a sum or
// mean over a dim. g must have A*C elements.
Tensor expand_dim(const Tensor& g, const Shape& shape, int64_t dim, double factor = 1.0);
// out = factor * g (one element) everywhere in `shape`: the backward of sum_all / mean_all.
Tensor expand_scalar(const Tensor& g, const Shape& shape, double factor = 1.0);

namespace cpu {
// out[a, c] = factor * sum_r x[a, r, c]
void sum_arc(const Tensor& x, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out);
// out[a, r, c] = factor * g[a, c]
void expand_arc(const Tensor& g, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out);
}  // namespace cpu
namespace cuda {
void sum_arc(const Tensor& x, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out);
void expand_arc(const Tensor& g, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out);
}  // namespace cuda

}  // namespace coil::kernels
