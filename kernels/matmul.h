// Matrix products. matmul: op(a) @ op(b), op a transpose of the last two dims when asked;
// 2-d [M, K] @ [K, N], or 3-d with equal batch sizes. An optional bias [N] is added to every
// row of the result. On the GPU through cuBLASLt: bf16 in and out with fp32 accumulation, or
// f32 (true fp32, no TF32); the bias goes through the CUBLASLT_EPILOGUE_BIAS epilogue. On the
// CPU (f32, f64): blocks of 64 output rows on the CPU threads (kernels/cpu/parallel.h), each
// through OpenBLAS when coil is built with it (accumulated in the tensors' precision), else
// through the plain-loop reference (accumulated in double); the same bits at any thread count.
#pragma once
#include <string>

#include "core/tensor.h"

namespace coil::kernels {

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false,
              const Tensor& bias = Tensor());
// The same product by the CPU's plain-loop reference (one thread, accumulated in double).
Tensor matmul_reference(const Tensor& a, const Tensor& b, bool transpose_a = false, bool transpose_b = false,
                        const Tensor& bias = Tensor());
// x [..., in] @ weight [out, in]^T (+ bias [out]) -> [..., out]
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// GELU (tanh form, as kernels::gelu) folded into a product, for GPT-2's MLP. On the GPU one
// cuBLASLt product with the GELU_AUX_BIAS or DGELU epilogue (output widths a multiple of 8, the
// epilogue's leading-dimension rule; other widths take the separate ops); on the CPU the separate
// ops, the same bits as linear + gelu and matmul + gelu's backward.
// linear_gelu: pre = x W^T (+ b) and out = gelu(pre), both [..., out]; the backward needs pre.
struct LinearGelu {
  Tensor out, pre;
};
LinearGelu linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());
// (a @ b) * gelu'(pre), 2-d, pre [M, N]: gelu's input gradient from the product that gives its
// output gradient (the next linear's dx).
Tensor matmul_dgelu(const Tensor& a, const Tensor& b, const Tensor& pre);

// out = op(a) @ op(b) into an existing 2-d tensor (a slice of a larger one may do), or, with
// accumulate, out += op(a) @ op(b). On the GPU one cuBLASLt call (beta = 1 to accumulate);
// out may be f32 while a and b are bf16 (an fp32 sum of bf16 products, nothing rounded to bf16
// in between). On the CPU (a, b and out of one dtype) the product goes to a temporary that is
// then added: the same bits as a product followed by kernels::accumulate.
void matmul_into(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& out,
                 bool accumulate = false);

// The shapes of one product, resolved by the dispatcher.
struct GemmShape {
  int64_t batch = 1, M = 0, N = 0, K = 0;
  bool transpose_a = false, transpose_b = false;
};

namespace cpu {
void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g);
// The plain loops on one thread, accumulated in double: what the tests hold matmul against.
void matmul_reference(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g);
// What matmul goes through: "OpenBLAS (<core> kernels)" (the kernels OpenBLAS picked for this
// CPU), or "" for the plain loops (coil built without OpenBLAS).
std::string blas_name();
}
namespace cuda {
// What a product's epilogue does besides the optional bias: nothing; gelu_aux: out = gelu(op(a)
// op(b) + bias) and aux = its input; dgelu: out = (op(a) op(b)) * gelu'(aux). aux [M, N], 2-d
// products with N a multiple of 8 only.
enum class GemmEpilogue { plain, gelu_aux, dgelu };
// out (already allocated, [batch,] M x N) = op(a) @ op(b) (+ bias), then the epilogue; or, with
// accumulate, out += op(a) @ op(b) (plain, no bias). out is a's dtype, or f32 for bf16 a and b
// (plain only). On the compute stream.
void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g,
            GemmEpilogue epilogue = GemmEpilogue::plain, const Tensor& aux = Tensor(), bool accumulate = false);
}

}  // namespace coil::kernels
