// Element-wise differentiable ops. Binary ops broadcast b over the leading dims of a: b's
// shape must equal a's or be a suffix of it (a [B, T, D] + b [D]); b's gradient is summed
// over the broadcast dims. A one-element b ([] or [1]) broadcasts everywhere.
#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

Variable add(const Variable& a, const Variable& b);
Variable sub(const Variable& a, const Variable& b);
Variable mul(const Variable& a, const Variable& b);
Variable div(const Variable& a, const Variable& b);
Variable scale(const Variable& x, double factor);  // factor * x

Variable exp(const Variable& x);
Variable log(const Variable& x);
Variable sigmoid(const Variable& x);
Variable silu(const Variable& x);      // x * sigmoid(x)
Variable gelu(const Variable& x);      // tanh form, as GPT-2
Variable softplus(const Variable& x);  // log(1 + exp(x)), linear above 20 as PyTorch
// h [..., 2n] = (a | g) -> a * silu(g) [..., n]: a gated MLP's activation on its fused
// up-projection, one kernel each way; only h is saved.
Variable swiglu(const Variable& h);

// Cast with backward (the gradient is cast back): fp32 master weights to bf16 compute.
Variable to_dtype(const Variable& x, DType dtype);

}  // namespace coil::autograd
