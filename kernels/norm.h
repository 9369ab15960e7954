// RMSNorm and LayerNorm over the last dimension, plain or fused with the residual add of a
// pre-norm block. Statistics in fp32 (f64 in the CPU reference for f64 tensors).
//
//   r      = x + residual          (fused variants; residual kept in fp32, undefined = x alone)
//   layer:  xhat = (r - mean(r)) * rstd,  rstd = 1 / sqrt(mean((r - mean)^2) + eps)
//   rms:    xhat = r * rstd,              rstd = 1 / sqrt(mean(r^2) + eps)
//   y      = xhat * weight (+ bias)    in x's dtype
//
// Backward, with g = dy * weight and means over the row:
//   layer:  dr = rstd * (g - mean(g) - xhat * mean(g * xhat))
//   rms:    dr = rstd * (g - xhat * mean(g * xhat))
//   dr    += d residual' (the gradient reaching the fused variant's residual output)
//   dx = dr in x's dtype, d residual = dr in fp32; dweight = sum_rows dy * xhat, dbias = sum_rows dy
// The column sums are deterministic (fixed partial sums per block, then a fixed-order sum).
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

// The dtype of the fused variants' residual stream for an input of dtype x: f32, or f64 for
// f64 inputs (gradient checks).
DType norm_residual_dtype(DType x);

struct NormForward {
  Tensor y;         // x's shape and dtype
  Tensor residual;  // r = x + residual in the residual dtype (only when write_residual)
  Tensor mean;      // [rows] in the residual dtype (layer norm only)
  Tensor rstd;      // [rows] in the residual dtype
};

// x [..., D]; residual undefined or x's shape in norm_residual_dtype(x); weight [D] in x's
// dtype (on the GPU also f32); bias [D] like weight, or undefined (always for rms).
NormForward norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight,
                         const Tensor& bias, double eps, bool rms, bool write_residual);

struct NormBackward {
  Tensor dx;        // in dx_dtype
  Tensor dresidual; // in the input's dtype (when want_dresidual)
  Tensor dweight;   // weight's dtype
  Tensor dbias;     // (when has_bias)
};

// input: what was normalized (x for the plain norms, the residual output r for the fused ones).
// grad_residual_out: the gradient reaching r as an output (fused variants), or undefined.
NormBackward norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& mean,
                           const Tensor& rstd, const Tensor& weight, bool has_bias,
                           const Tensor& grad_residual_out, DType dx_dtype, bool want_dresidual,
                           bool rms);

namespace cpu {
void norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, bool rms, const NormForward& out);
void norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& mean, const Tensor& rstd,
                   const Tensor& weight, const Tensor& grad_residual_out, bool rms, const NormBackward& out);
}  // namespace cpu
namespace cuda {
void norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, bool rms, const NormForward& out);
void norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& mean, const Tensor& rstd,
                   const Tensor& weight, const Tensor& grad_residual_out, bool rms, const NormBackward& out);
}  // namespace cuda

}  // namespace coil::kernels
