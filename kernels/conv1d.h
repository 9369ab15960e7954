// Depthwise causal 1-D convolution (the short convolution of the Mamba mixer), with optional
// bias and fused SiLU, forward and backward.
//   x: (batch, length, dim), channel-last as in_proj produces it; weight: (dim, width) [the
//   layer stores conv1d.weight as (dim, 1, width) and reshapes]; bias: (dim), optional.
//   pre[b,t,d] = bias[d] + sum_{k<width} weight[d,k] * x[b,t - (width-1) + k,d]  (x = 0 before t=0)
//   out = silu ? pre * sigmoid(pre) : pre
// Backward (pre recomputed from x): g = dout * (silu ? silu'(pre) : 1);
//   dx[t] = sum_k weight[d,k] g[t + (width-1) - k],  dweight[d,k] = sum_{b,t} g[t] x[t-(width-1)+k],
//   dbias[d] = sum_{b,t} g[t]. Weight and bias gradients are reduced in a fixed order.
// Options (Conv1dOptions, each optional):
//   initial_state (batch, width-1, dim), x's dtype: the inputs at t = -(width-1) .. -1 (else 0);
//     the backward returns its gradient (dinitial_state).
//   seq_idx (batch, length) i32 (kernels/documents.h): position t sees no input before the
//     start of its document (those count as 0), and the initial state only when its document
//     began before the window (no start in (0, t]).
//   final_state (an output of the forward): (batch, width-1, dim), x's dtype, the inputs at
//     t = length-(width-1) .. length-1 as position length-1 sees them (0 before its document's
//     start): the initial_state of the window that continues this one. Not differentiable.
// Dtypes: CPU f32/f64 (all one dtype); CUDA x/out/dx f32 or bf16, weight/bias f32 (or x's
// dtype), fp32 math. Width 1..kConv1dMaxWidth.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

constexpr int64_t kConv1dMaxWidth = 8;

struct Conv1dOptions {
  Tensor seq_idx;        // optional (batch, length) i32: documents
  Tensor initial_state;  // optional (batch, width - 1, dim), x's dtype
};

struct Conv1dGrads {
  Tensor dx, dweight, dbias;  // dbias undefined when there was no bias
  Tensor dinitial_state;      // undefined when there was no initial state
};

// final_state: when given, receives the state the next window starts from (above).
Tensor conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                      const Conv1dOptions& options = {}, Tensor* final_state = nullptr);
Conv1dGrads conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias,
                            bool silu, const Conv1dOptions& options = {});

namespace cpu {
// final_state may be undefined (not written).
void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                    const Conv1dOptions& options, const Tensor& out, const Tensor& final_state);
void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dOptions& options, const Conv1dGrads& grads);
}  // namespace cpu
namespace cuda {
void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                    const Conv1dOptions& options, const Tensor& out, const Tensor& final_state);
void conv1d_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                     const Conv1dOptions& options, const Conv1dGrads& grads);
}  // namespace cuda

}  // namespace coil::kernels
