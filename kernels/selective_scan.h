// The selective scan of Mamba (S6), forward and backward, on tensors.
//
// Layout: channel-last, as the linear layers around the scan produce and consume it (in_proj
// gives (batch, length, 2 dim), x_proj (batch, length, dt_rank + 2 state), out_proj reads
// (batch, length, dim)), so the Mamba mixer needs no transpose copies:
//   u, delta, z : (batch, length, dim)        out has u's shape and dtype
//   A           : (dim, state)                 fp32 (f64 on the CPU reference in f64)
//   B, C        : (batch, length, state)       shared by all channels of a batch row
//   D, delta_bias: (dim)                       fp32
//   initial_state, final_state: (batch, dim, state)  fp32
// Math, per batch b, channel d, state n, time t (h starts at initial_state, else 0):
//   dt   = softplus(delta[t] + delta_bias[d])   (bias and softplus each optional)
//   h[n] = exp(dt * A[d,n]) * h[n] + dt * B[n,t] * u[t]
//          (at a document start t of seq_idx the first term is 0: h[n] = dt * B[n,t] * u[t])
//   y[t] = sum_n C[n,t] * h[n] + D[d] * u[t]
//   out[t] = y[t] * silu(z[t])                   (when z is given, else out = y)
// An undefined Tensor means "absent" for D, z, delta_bias, initial_state, seq_idx.
//
// Document resets (seq_idx, kernels/documents.h): the state before a document start is zero,
// so nothing flows across it, forward or backward (d h_{t-1} gets nothing from a start t, and
// the dA and ddelta terms of exp(dt A) h_{t-1} vanish there). The initial state applies at
// t = 0 only: a row that begins a fresh document at t = 0 passes zeros (or no initial state).
//
// Dtypes: on the CPU all tensors share one dtype, f32 or f64 (the reference). On CUDA u, delta,
// z, B, C (and out and their gradients) are f32 or bf16, A, D, delta_bias and the states f32;
// all math is fp32. d_state up to 64 on CUDA (kScanMaxStateCuda); the CPU has no limit.
//
// What the forward saves for backward: `checkpoints`, the fp32 state at the end of every
// kScanCheckpointSteps time steps (and at the end), (batch, dim, ceil(length /
// kScanCheckpointSteps), state): the CUDA backward recomputes everything else from the inputs. The CPU reference saves nothing (it recomputes
// the whole forward). Backward needs the same ScanArgs and the ScanResult of the forward.
//
// deterministic: the CUDA backward sums dB and dC over channel tiles with float atomics by
// default; deterministic = true writes per-tile partial sums and adds them in a fixed order
// (two runs give identical bits; costs memory traffic). dA, dD, d delta_bias are always
// reduced in a fixed order.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

struct ScanArgs {
  Tensor u, delta, A, B, C;
  Tensor D, z, delta_bias, initial_state;  // optional
  // Optional (batch, length) int32 document index per position (non-decreasing along a row):
  // where it changes (t > 0, seq_idx[t] != seq_idx[t - 1]) a document starts and the state
  // before that step counts as zero (no decay of the earlier document's state, no gradient
  // across). The initial state applies at t = 0 only.
  Tensor seq_idx;
  bool delta_softplus = false;
};

struct ScanResult {
  Tensor out;          // (batch, length, dim), u's dtype
  Tensor final_state;  // (batch, dim, state), fp32 (f64 on the f64 CPU reference)
  Tensor checkpoints;  // CUDA: (batch, dim, ceil(length / kScanCheckpointSteps), state) fp32; CPU: undefined
};

// Gradients, each in its input's shape and dtype; undefined where the input was absent.
struct ScanGrads {
  Tensor du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state;
};

constexpr int64_t kScanChunk = 32;            // time steps staged at once (CUDA)
constexpr int64_t kScanCheckpointSteps = 64;  // time steps between saved states (CUDA)
constexpr int64_t kScanMaxStateCuda = 64;

// save_checkpoints = false skips writing the chunk states (inference).
ScanResult selective_scan_forward(const ScanArgs& args, bool save_checkpoints = true);
// grad_out: out's shape and dtype. grad_final_state: optional (batch, dim, state).
ScanGrads selective_scan_backward(const ScanArgs& args, const ScanResult& saved,
                                  const Tensor& grad_out, const Tensor& grad_final_state,
                                  bool deterministic = false);

// How many waves of thread blocks (the blocks the GPU keeps resident at once) the CUDA scan's
// time segments aim for, forward and backward, where the (channel tiles x batch) blocks alone
// fill less than a quarter of a wave (small batch x long length: B4 L8192, B1 L65536); from a
// quarter up, segments fill at most one wave, and none are cut when those blocks fill it.
// More segments fill the GPU in whole waves and recompute more (docs/SELECTIVE_SCAN.md, "Time
// parallelism"). Read once from COIL_SCAN_WAVES="F,B" (default "3,3"); bench_scan --waves sets
// it to measure the trade.
struct ScanWaves {
  float forward = 3.f, backward = 3.f;
};
const ScanWaves& scan_waves();
void set_scan_waves(const ScanWaves& waves);

// Which main kernel the CUDA backward runs (docs/SELECTIVE_SCAN.md): `one_channel`, a lane
// holds 8 states of one channel; `channel_pairs` (default: 4-5% faster on an H200), a lane holds
// 4 states of two channels and sums dB, dC over channels in registers and shuffles (d_state 9
// to 16 only; other d_state run `one_channel`). Same inputs, outputs and contracts. Read once
// from COIL_SCAN_BWD=one|pairs; bench_scan times both.
enum class ScanBackward { one_channel, channel_pairs };
ScanBackward scan_backward_kind();
void set_scan_backward_kind(ScanBackward kind);

// Validates shapes, dtypes and devices; raises an Error naming the argument and the limit.
void check_scan_args(const char* op, const ScanArgs& args);

namespace cpu {
void selective_scan_forward(const ScanArgs& args, const ScanResult& result);
void selective_scan_backward(const ScanArgs& args, const Tensor& grad_out,
                             const Tensor& grad_final_state, const ScanGrads& grads);
}  // namespace cpu
namespace cuda {
// result.checkpoints may be undefined (not saved).
void selective_scan_forward(const ScanArgs& args, const ScanResult& result);
void selective_scan_backward(const ScanArgs& args, const ScanResult& saved, const Tensor& grad_out,
                             const Tensor& grad_final_state, const ScanGrads& grads,
                             bool deterministic);
}  // namespace cuda

}  // namespace coil::kernels
