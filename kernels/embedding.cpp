#include "kernels/embedding.h"

#include "core/cuda.h"

namespace coil::kernels {
namespace {

// "[1, 3]" for flat position 7 of shape [2, 4].
std::string position_str(int64_t flat, const Shape& shape) {
  Shape index(shape.size());
  for (size_t k = shape.size(); k-- > 0;) {
    int64_t s = std::max<int64_t>(shape[k], 1);
    index[k] = flat % s;
    flat /= s;
  }
  return shape_str(index);
}

// Host-side range check of CPU ids.
void check_ids_on_host(const char* op, const Tensor& ids, int64_t vocab) {
  int64_t n = ids.numel();
  auto check = [&](int64_t i, int64_t id) {
    if (id < 0 || id >= vocab)
      fail("{}: id {} at position {} of ids {} is outside the vocabulary [0, {})", op, id,
           position_str(i, ids.shape()), describe(ids), vocab);
  };
  if (ids.dtype() == DType::i32) {
    const int32_t* p = ids.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) check(i, p[i]);
  } else {
    const int64_t* p = ids.data<int64_t>();
    for (int64_t i = 0; i < n; ++i) check(i, p[i]);
  }
}

void check_ids(const char* op, const Tensor& ids) {
  check_defined(op, ids, "ids");
  check_dtype(op, ids, {DType::i32, DType::i64});
}

}  // namespace

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  const char* op = "embedding";
  check_defined(op, weight, "weight");
  check_ids(op, ids);
  check_same_device(op, weight, ids);
  COIL_CHECK(weight.dim() == 2, "embedding: weight must be [vocab, dim], got {}", describe(weight));
  COIL_CHECK(is_floating(weight.dtype()), "embedding: weight must be floating, got {}", describe(weight));
  Shape out_shape = ids.shape();
  out_shape.push_back(weight.size(1));
  Tensor out = Tensor::empty(out_shape, weight.dtype(), weight.device());
  if (weight.device().is_cpu()) {
    check_ids_on_host(op, ids, weight.size(0));
    if (out.numel() > 0) cpu::embedding(weight, ids, out);
    return out;
  }
#ifdef COIL_CUDA
  cuda::report_embedding_error(op);
  if (out.numel() > 0) cuda::embedding(weight, ids, out);
  return out;
#else
  fail("{}: {} is on a GPU, but coil was built without CUDA", op, describe(weight));
#endif
}

Tensor embedding_backward(const Tensor& grad, const Tensor& ids, int64_t vocab) {
  const char* op = "embedding backward";
  check_defined(op, grad, "grad");
  check_ids(op, ids);
  check_same_device(op, grad, ids);
  Shape expect = ids.shape();
  COIL_CHECK(grad.dim() == ids.dim() + 1 && Shape(grad.shape().begin(), grad.shape().end() - 1) == expect,
             "embedding backward: grad {} must be the ids' shape {} plus one dim", describe(grad),
             shape_str(ids.shape()));
  COIL_CHECK(vocab >= 0, "embedding backward: negative vocabulary size {}", vocab);
  Tensor dw = Tensor::empty({vocab, grad.size(-1)}, grad.dtype(), grad.device());
  if (grad.device().is_cpu()) {
    check_ids_on_host(op, ids, vocab);
    cpu::embedding_backward(grad, ids, dw);
    return dw;
  }
#ifdef COIL_CUDA
  cuda::report_embedding_error(op);
  cuda::embedding_backward(grad, ids, dw);
  return dw;
#else
  fail("{}: {} is on a GPU, but coil was built without CUDA", op, describe(grad));
#endif
}

void check_embedding_errors() {
#ifdef COIL_CUDA
  if (!cuda_available()) return;
  coil::cuda::synchronize();
  cuda::report_embedding_error("embedding (checked at a sync point)");
#endif
}

}  // namespace coil::kernels
