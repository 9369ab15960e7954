#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

// a [.., M, K] @ b [.., K, N] with optional transposes of either operand's last two dims;
// 2-d, or 3-d with equal batch sizes. On the GPU through cuBLASLt (bf16 in, fp32 accumulate).
Variable matmul(const Variable& a, const Variable& b, bool transpose_a = false, bool transpose_b = false);

// x [..., in] @ weight[out, in]^T (+ bias [out]): the Linear layer's product, with the bias
// added in the cuBLASLt epilogue on the GPU. bias may be undefined.
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = Variable());

}  // namespace coil::autograd
