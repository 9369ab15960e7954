// Causal (optionally sliding-window) multi-head attention as a differentiable op: a fused
// function that saves its inputs, the output and the log-sum-exp, and whose backward runs the
// flash backward kernels (kernels/attention.h for layouts and limits).
#pragma once
#include "autograd/variable.h"
#include "kernels/attention.h"

namespace coil::autograd {

// qkv (B, T, 3, H, hd) packed, as the fused in_proj gives it reshaped -> out (B, T, H, hd).
Variable attention(const Variable& qkv, const kernels::AttentionOptions& options = {});
// Separate q, k, v, each (B, T, H, hd) -> out (B, T, H, hd).
Variable attention(const Variable& q, const Variable& k, const Variable& v,
                   const kernels::AttentionOptions& options = {});

}  // namespace coil::autograd
