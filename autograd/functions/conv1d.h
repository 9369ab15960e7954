// Depthwise causal conv1d (+ bias, + optional SiLU) as a differentiable op; saves x (the
// backward recomputes the pre-activation). Layouts and limits: kernels/conv1d.h.
#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

// x (batch, length, dim), weight (dim, width), bias (dim) or undefined. Optional: seq_idx
// (batch, length) i32, the documents (kernels/documents.h); initial_state (batch, width-1, dim)
// in x's dtype, the inputs before t = 0 (differentiable); final_state, when given, receives
// the next window's initial state (a plain tensor: not differentiable).
Variable conv1d(const Variable& x, const Variable& weight, const Variable& bias, bool silu,
                const Tensor& seq_idx = Tensor(), const Variable& initial_state = Variable(),
                Tensor* final_state = nullptr);

}  // namespace coil::autograd
