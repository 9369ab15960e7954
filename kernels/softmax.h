// Softmax and log-softmax over the last dimension, forward and backward. Any leading shape
// (rows = numel / last dim) and any row length (a 50k vocabulary is one row). Math in fp32
// (f64 on the CPU reference for f64 tensors); outputs in the input's dtype.
//
//   softmax:      y = exp(x - max) / sum(exp(x - max))
//                 dx = y * (dy - sum(dy * y))
//   log_softmax:  y = x - max - log(sum(exp(x - max)))
//                 dx = dy - exp(y) * sum(dy)
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

Tensor softmax_forward(const Tensor& x);
Tensor log_softmax_forward(const Tensor& x);
// y is the forward's output; grad_y has its shape and dtype.
Tensor softmax_backward(const Tensor& grad_y, const Tensor& y);
Tensor log_softmax_backward(const Tensor& grad_y, const Tensor& y);

namespace cpu {
void softmax_forward(const Tensor& x, const Tensor& y, bool log);
void softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log);
}  // namespace cpu
namespace cuda {
void softmax_forward(const Tensor& x, const Tensor& y, bool log);
void softmax_backward(const Tensor& grad_y, const Tensor& y, const Tensor& grad_x, bool log);
}  // namespace cuda

}  // namespace coil::kernels
