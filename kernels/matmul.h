// Matrix products. matmul: op(a) @ op(b), op a transpose of the last two dims when asked;
// 2-d [M, K] @ [K, N], or 3-d with equal batch sizes. An optional bias [N] is added to every
// row of the result. On the GPU through cuBLASLt: bf16 in and out with fp32 accumulation, or
// f32 (true fp32, no TF32); the bias goes through the CUBLASLT_EPILOGUE_BIAS epilogue. On the
// CPU a plain-loop reference (f32, f64; accumulated in double).
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false,
              const Tensor& bias = Tensor());
// x [..., in] @ weight [out, in]^T (+ bias [out]) -> [..., out]
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// The shapes of one product, resolved by the dispatcher.
struct GemmShape {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  bool transpose_a = false, transpose_b = false;
};

namespace cpu {
void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g);
}
namespace cuda {
// out (already allocated, [batch,] M x N) = op(a) @ op(b) (+ bias). On the compute stream.
void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g);
}

}  // namespace coil::kernels
