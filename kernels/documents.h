// Documents packed into one window (docs/MODELS.md, "Packed documents and carried state").
//
// seq_idx: an optional int32 tensor (batch, length) holding a document index per position,
// non-decreasing along each row (mamba_ssm's convention). Position t starts a document iff
//   t > 0 and seq_idx[b][t] != seq_idx[b][t-1];
// position 0 continues whatever came before the window (an initial state, when given). The
// scan, the conv1d and attention read the boundaries this way and nothing else: only changes
// of the index matter, not its values.
//
//   document_starts(seq_idx)    (batch, length) i32: the first position of t's document
//   document_positions(seq_idx) (batch, length) i64: t minus that (the position within the
//                               document; learned position embeddings restart there)
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

// Whether position t of a row (row[0..t] readable) starts a document.
COIL_HOST_DEVICE inline bool starts_document(const int32_t* row, int64_t t) { return t > 0 && row[t] != row[t - 1]; }

// Raises an Error naming `op` unless seq_idx is i32 (batch, length) on `like`'s device.
void check_seq_idx(const char* op, const Tensor& seq_idx, int64_t batch, int64_t length, const Tensor& like);

Tensor document_starts(const Tensor& seq_idx);
Tensor document_positions(const Tensor& seq_idx);

namespace cpu {
// starts (i32) and positions (i64) may each be undefined (not written).
void document_bounds(const Tensor& seq_idx, const Tensor& starts, const Tensor& positions);
}  // namespace cpu
namespace cuda {
void document_bounds(const Tensor& seq_idx, const Tensor& starts, const Tensor& positions);
}  // namespace cuda

}  // namespace coil::kernels
