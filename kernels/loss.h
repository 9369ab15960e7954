// Cross-entropy over the last dim of logits [N, V] with integer targets [N] (i32 or i64):
//   lse_i  = log sum_j exp(logits_ij)                  (fp32 math; f64 for f64 on the CPU)
//   loss   = sum_{i: t_i != ignore} (lse_i - logits_i,t_i) / count,  count = #{t_i != ignore}
//            (0 when every target is ignored)
//   dlogits_ij = grad_loss / count * (exp(logits_ij - lse_i) - [j == t_i]), 0 on ignored rows
// The loss (and count) are one-element tensors on the logits' device, f32 (f64 for f64 logits).
//
// Out-of-range targets (outside [0, V) and not ignore_index):
// - CPU logits, or targets given on the CPU for GPU logits: validated on the host before any
//   work; the error names the target, its position and V.
// - targets already on the GPU: validating them would need a host sync, so the kernels do
//   not stop: such a row's loss is NaN (so the mean loss is NaN) and its gradient 0, and the
//   first bad target seen is recorded in a per-device flag. check_cross_entropy_targets(device)
//   reads the flag (a device-to-host copy: a sync point) and raises the same error naming
//   the target, its position and V. The trainer calls it where it already syncs (when it reads
//   the loss for logging); tests call it after the forward.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

struct CrossEntropyForward {
  Tensor loss;   // scalar
  Tensor lse;    // [N], saved for backward
  Tensor count;  // scalar: the non-ignored targets, saved for backward
};
CrossEntropyForward cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index);
// grad_loss: a one-element tensor of the loss's dtype, on the logits' device (never read on the host).
Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, const Tensor& count, int64_t ignore_index);

// Fused linear + cross-entropy: logits = hidden [N, d] @ weight [V, d]^T, processed in chunks
// of rows (matmul kernels per chunk, then one pass over the chunk's logits computing the row
// losses and overwriting the logits in place with their gradient), so that only one chunk of
// logits ([chunk, V] in hidden's dtype) ever exists. The gradients of the mean loss with
// respect to hidden and weight are computed here, during the forward; backward only scales
// them by the incoming gradient (scale_by_scalar). With several chunks the weight gradient is
// summed in fp32 (f64 on the CPU for f64).
struct LinearCrossEntropyForward {
  Tensor loss;         // scalar
  Tensor grad_hidden;  // [N, d], hidden's dtype
  Tensor grad_weight;  // [V, d], weight's dtype
};
LinearCrossEntropyForward linear_cross_entropy_forward(const Tensor& hidden, const Tensor& weight,
                                                       const Tensor& targets, int64_t ignore_index,
                                                       int64_t chunk_rows = 0,  // 0: the default
                                                       bool compute_grads = true);  // false: loss only
// The default chunk (4096 rows); tests and benchmarks may change it.
int64_t linear_cross_entropy_chunk_rows();
void set_linear_cross_entropy_chunk_rows(int64_t rows);

// x * s, s a one-element floating tensor on x's device (read on the device: no sync).
Tensor scale_by_scalar(const Tensor& x, const Tensor& s);

// Raises the recorded out-of-range target error of `device`, if any, and clears it. A host
// sync on a GPU; nothing to do on the CPU (those errors are raised at once).
void check_cross_entropy_targets(Device device);

// Building blocks (exposed for benchmarks and tests).
// The number of non-ignored targets as a scalar of dtype `dtype`; on the CPU also validates
// the targets against V.
Tensor cross_entropy_count(const Tensor& targets, int64_t ignore_index, int64_t V, DType dtype);

namespace cpu {
// Per row of logits (rows offset `row0` into the whole batch, for error messages): the lse
// (computed and stored into lse, or read from it when lse_given), the row loss (if row_loss is
// defined) and the gradient scaled by grad_loss / count (if grad is defined; grad may be the
// logits themselves). grad_loss undefined means 1.
void cross_entropy_rows(const Tensor& logits, const Tensor& targets, int64_t ignore_index, int64_t row0,
                        const Tensor& count, const Tensor& grad_loss, const Tensor& lse, bool lse_given,
                        const Tensor& row_loss, const Tensor& grad);
void cross_entropy_count(const Tensor& targets, int64_t ignore_index, int64_t V, const Tensor& count);
void cross_entropy_mean(const Tensor& row_loss, const Tensor& count, const Tensor& loss);
void scale_by_scalar(const Tensor& x, const Tensor& s, const Tensor& out);
}  // namespace cpu
namespace cuda {
void cross_entropy_rows(const Tensor& logits, const Tensor& targets, int64_t ignore_index, int64_t row0,
                        const Tensor& count, const Tensor& grad_loss, const Tensor& lse, bool lse_given,
                        const Tensor& row_loss, const Tensor& grad);
void cross_entropy_count(const Tensor& targets, int64_t ignore_index, const Tensor& count);
void cross_entropy_mean(const Tensor& row_loss, const Tensor& count, const Tensor& loss);
void scale_by_scalar(const Tensor& x, const Tensor& s, const Tensor& out);
void check_targets(int device);
}  // namespace cuda

}  // namespace coil::kernels
