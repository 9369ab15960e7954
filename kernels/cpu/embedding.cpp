// CPU reference for the embedding: a gather forward, a scatter-add backward in position
// order. Ids were checked by the dispatcher.
#include <cstring>

#include "kernels/embedding.h"

namespace coil::kernels::cpu {
namespace {

template <class F>
void for_each_id(const Tensor& ids, F&& f) {
  int64_t n = ids.numel();
  if (ids.dtype() == DType::i32) {
    const int32_t* p = ids.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) f(i, int64_t(p[i]));
  } else {
    const int64_t* p = ids.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) f(i, p[i]);
  }
}

}  // namespace

void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  int64_t D = weight.size(1);
  size_t row = size_t(D) * dtype_size(weight.dtype());
  const char* w = static_cast<const char*>(weight.raw());
  char* o = static_cast<char*>(out.raw());
  for_each_id(ids, [&](int64_t i, int64_t id) { std::memcpy(o + size_t(i) * row, w + size_t(id) * row, row); });
}

void embedding_backward(const Tensor& grad, const Tensor& ids, const Tensor& grad_weight) {
  dispatch_cpu_float("embedding backward", grad, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    int64_t D = grad_weight.size(1);
    const T* g = grad.data<T>();
    T* dw = grad_weight.data<T>();
    std::memset(static_cast<void*>(dw), 0, grad_weight.nbytes());
    for_each_id(ids, [&](int64_t i, int64_t id) {
      for (int64_t d = 0; d < D; ++d) dw[id * D + d] += g[i * D + d];
    });
  });
}

}  // namespace coil::kernels::cpu
