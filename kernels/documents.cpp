#include "kernels/documents.h"

#include "kernels/dispatch.h"

namespace coil::kernels {
namespace {

// starts and/or positions of seq_idx, on its device.
void bounds(const char* op, const Tensor& seq_idx, const Tensor& starts, const Tensor& positions) {
  if (seq_idx.numel() == 0) return;
  COIL_DISPATCH(op, seq_idx.device(), cpu::document_bounds(seq_idx, starts, positions),
                cuda::document_bounds(seq_idx, starts, positions));
}

}  // namespace

void check_seq_idx(const char* op, const Tensor& seq_idx, int64_t batch, int64_t length, const Tensor& like) {
  COIL_CHECK(seq_idx.dtype() == DType::i32,
             "{}: seq_idx (a document index per position) must be i32 (batch, length), got {}", op,
             describe(seq_idx));
  COIL_CHECK(seq_idx.shape() == Shape({batch, length}), "{}: seq_idx must be (batch, length) = ({}, {}), got {}", op,
             batch, length, describe(seq_idx));
  COIL_CHECK(seq_idx.device() == like.device(), "{}: seq_idx is on {} but the input is on {}: {}", op,
             seq_idx.device().str(), like.device().str(), describe(like));
}

Tensor document_starts(const Tensor& seq_idx) {
  check_defined("document_starts", seq_idx, "seq_idx");
  COIL_CHECK(seq_idx.dim() == 2, "document_starts: seq_idx must be (batch, length), got {}", describe(seq_idx));
  check_seq_idx("document_starts", seq_idx, seq_idx.size(0), seq_idx.size(1), seq_idx);
  Tensor starts = Tensor::empty(seq_idx.shape(), DType::i32, seq_idx.device());
  bounds("document_starts", seq_idx, starts, Tensor());
  return starts;
}

Tensor document_positions(const Tensor& seq_idx) {
  check_defined("document_positions", seq_idx, "seq_idx");
  COIL_CHECK(seq_idx.dim() == 2, "document_positions: seq_idx must be (batch, length), got {}", describe(seq_idx));
  check_seq_idx("document_positions", seq_idx, seq_idx.size(0), seq_idx.size(1), seq_idx);
  Tensor positions = Tensor::empty(seq_idx.shape(), DType::i64, seq_idx.device());
  bounds("document_positions", seq_idx, Tensor(), positions);
  return positions;
}

}  // namespace coil::kernels
