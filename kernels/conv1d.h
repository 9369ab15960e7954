// Depthwise causal 1-D convolution (the short convolution of the Mamba mixer), with optional
// bias and fused SiLU, forward and backward.
//   x: (batch, length, dim), channel-last as in_proj produces it; weight: (dim, width) [the
//   layer stores conv1d.weight as (dim, 1, width) and reshapes]; bias: (dim), optional.
//   pre[b,t,d] = bias[d] + sum_{k<width} weight[d,k] * x[b,t - (width-1) + k,d]  (x = 0 before t=0)
//   out = silu ? pre * sigmoid(pre) : pre
// Backward (pre recomputed from x): g = dout * (silu ? silu'(pre) : 1);
//   dx[t] = sum_k weight[d,k] g[t + (width-1) - k],  dweight[d,k] = sum_{b,t} g[t] x[t-(width-1)+k],
//   dbias[d] = sum_{b,t} g[t]. Weight and bias gradients are reduced in a fixed order.
// Dtypes: CPU f32/f64 (all one dtype); CUDA x/out/dx f32 or bf16, weight/bias f32 (or x's
// dtype), fp32 math. Width 1..kConv1dMaxWidth.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

constexpr int64_t kConv1dMaxWidth = 8;

struct Conv1dGrads {
  Tensor dx, dweight, dbias;  // dbias undefined when there was no bias
};

Tensor conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu);
Conv1dGrads conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias,
                            bool silu);

namespace cpu {
void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& out);
void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dGrads& grads);
}  // namespace cpu
namespace cuda {
void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, const Tensor& out);
void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dGrads& grads);
}  // namespace cuda

}  // namespace coil::kernels
