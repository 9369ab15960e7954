// CPU reference of the document bounds (kernels/documents.h): one pass along each row.
#include "kernels/documents.h"

namespace coil::kernels::cpu {

void document_bounds(const Tensor& seq_idx, const Tensor& starts, const Tensor& positions) {
  const int64_t nb = seq_idx.size(0), nl = seq_idx.size(1);
  const int32_t* s = seq_idx.data<int32_t>();
  int32_t* st = starts.defined() ? starts.data<int32_t>() : nullptr;
  int64_t* pos = positions.defined() ? positions.data<int64_t>() : nullptr;
  for (int64_t b = 0; b < nb; ++b) {
    const int32_t* row = s + b * nl;
    int64_t start = 0;
    for (int64_t t = 0; t < nl; ++t) {
      if (starts_document(row, t)) start = t;
      if (st) st[b * nl + t] = int32_t(start);
      if (pos) pos[b * nl + t] = t - start;
    }
  }
}

}  // namespace coil::kernels::cpu
