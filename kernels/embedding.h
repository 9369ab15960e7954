// Embedding lookup. weight [V, D], ids (i32 or i64, any shape S) -> out [S..., D] with
// out[s, :] = weight[ids[s], :]. The backward scatters the output gradient into a [V, D]
// weight gradient (rows of ids that repeat are summed).
//
// Out-of-range ids are errors naming the id and its position:
// - CPU ids: checked on the host before anything is computed.
// - GPU ids: checking on the host would need a copy to the host and a sync, so the kernels
//   check instead: an out-of-range id gives a zero output row (and no gradient), and the
//   first such id and its flat position are recorded in a flag in mapped pinned host memory.
//   The error is raised (and the flag cleared) at the first of these points after the faulty
//   kernel has run: the start of any later embedding call (forward or backward; reading the
//   flag there costs no sync), or check_embedding_errors(), which synchronizes the compute
//   stream (the documented sync point; the trainer calls it where it already syncs, e.g.
//   when it reads the loss).
//
// The GPU backward is deterministic: ids are radix-sorted (stable, so each vocabulary row's
// tokens stay in position order) and one thread block sums each row's run in fp32 in that
// fixed order; no atomics.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

Tensor embedding(const Tensor& weight, const Tensor& ids);
// grad [S..., D], ids [S...] -> the weight's gradient [vocab, D] in grad's dtype.
Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t vocab);
// Synchronizes the current device's compute stream and raises if a GPU embedding kernel
// met an out-of-range id since the last report. A no-op without CUDA.
void check_embedding_errors();

namespace cpu {
void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_backward(const Tensor& grad, const Tensor& ids, const Tensor& grad_weight);
}  // namespace cpu
namespace cuda {
void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out);
void embedding_backward(const Tensor& grad, const Tensor& ids, const Tensor& grad_weight);
// Raises (naming `op`) if the error flag is set, and clears it. No sync.
void report_embedding_error(const char* op);
}  // namespace cuda

}  // namespace coil::kernels
