// The selective scan as a differentiable op (a fused function: it saves its inputs and the
// forward's chunk checkpoints, and its backward runs the recomputing backward kernel).
// Layouts, dtypes and limits: kernels/selective_scan.h. Undefined Variables mean "absent"
// for D, z, delta_bias and initial_state (and seq_idx, a plain tensor).
#pragma once
#include "autograd/variable.h"
#include "core/determinism.h"
#include "kernels/selective_scan.h"

namespace coil::autograd {

struct ScanInputs {
  Variable u, delta, A, B, C;
  Variable D, z, delta_bias, initial_state;  // optional
  Tensor seq_idx;  // optional (batch, length) i32: document resets (kernels/documents.h)
  bool delta_softplus = false;
  // Fixed-order reductions for dB and dC in the CUDA backward; follows the process-wide
  // deterministic mode (core/determinism.h) unless set.
  bool deterministic = coil::deterministic();
};

struct ScanOutputs {
  Variable out;          // (batch, length, dim)
  Variable final_state;  // (batch, dim, state), fp32
};

ScanOutputs selective_scan(const ScanInputs& in);

}  // namespace coil::autograd
