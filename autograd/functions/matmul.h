#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

// a [.., M, K] @ b [.., K, N] with optional transposes of either operand's last two dims;
// 2-d, or 3-d with equal batch sizes. On the GPU through cuBLASLt (bf16 in, fp32 accumulate).
Variable matmul(const Variable& a, const Variable& b, bool transpose_a = false, bool transpose_b = false);

// x [..., in] @ weight[out, in]^T (+ bias [out]): the Linear layer's product, with the bias
// added in the cuBLASLt epilogue on the GPU. bias may be undefined.
Variable linear(const Variable& x, const Variable& weight, const Variable& bias = Variable());

// linear(gelu(linear(x, w1, b1)), w2, b2), GPT-2's MLP, as one op: on the GPU gelu rides in the
// epilogues of fc1's product (forward) and of the product that gives its input's gradient
// (backward), kernels::linear_gelu and matmul_dgelu. Saves x, gelu's input and output (as the
// separate ops do); on the CPU the same bits as they give. Biases may be undefined.
Variable gelu_mlp(const Variable& x, const Variable& w1, const Variable& b1, const Variable& w2, const Variable& b2);

// linear(x, weight, bias) split along its last dim into pieces of the given sizes, one product
// per block of the weight's rows (Mamba's in_proj into x and z): separate outputs, so nothing
// is copied to split them. The backward sums x's gradient in the products themselves (the
// second and later ones accumulate into the first's output) and writes each block's weight
// gradient into its rows of one gradient: no add or concat kernels.
std::vector<Variable> linear_split(const Variable& x, const Variable& weight, const Variable& bias,
                                   const std::vector<int64_t>& sizes);

}  // namespace coil::autograd
