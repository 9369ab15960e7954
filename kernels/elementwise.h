// Element-wise kernels. Binary ops broadcast b over the leading dims of a: b's shape equals
// a's, is a suffix of it (a [B, T, D] op b [D]), or b has one element. a and b share dtype and
// device; the result has a's shape. Unary ops and their backwards keep the input's shape and
// dtype. CPU: f32 and f64; CUDA: f32 and bf16 at the memory interface, fp32 math.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

enum class BinaryOp { add, sub, mul, div };
enum class UnaryOp { exp, log, sigmoid, silu, gelu, softplus };
const char* binary_op_name(BinaryOp op);
const char* unary_op_name(UnaryOp op);

// out = a op b (b broadcast as above).
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
// out = factor * x
Tensor scale(const Tensor& x, double factor);

// out = f(x)
Tensor unary(UnaryOp op, const Tensor& x);
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor silu(const Tensor& x);      // x * sigmoid(x)
Tensor gelu(const Tensor& x);      // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
Tensor softplus(const Tensor& x);  // log(1 + exp(x)); x above 20 passes through (as PyTorch)
// grad_in = grad * f'(x), from the op's input x (recomputed, so nothing but x is saved).
Tensor unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x);

// SwiGLU on the fused up-projection of a gated MLP: h [..., 2n] holds (a | g), the two halves of
// its last dim; out [..., n] = a * silu(g). One pass over h instead of a split, a silu and a
// product.
Tensor swiglu(const Tensor& h);
// dh [..., 2n] = (grad * silu(g) | grad * a * silu'(g)) from the op's input h (recomputed, so
// nothing but h is saved); grad [..., n].
Tensor swiglu_backward(const Tensor& grad, const Tensor& h);

// A copy converted to dtype (the same tensor's buffer if the dtype already matches).
Tensor to_dtype(const Tensor& x, DType dtype);

// Checks a binary op's operands (exposed for the autograd wrappers and other families).
void check_broadcastable(const char* op, const Tensor& a, const Tensor& b);

namespace cpu {
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void scale(const Tensor& x, double factor, const Tensor& out);
void unary(UnaryOp op, const Tensor& x, const Tensor& out);
void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& out);
void swiglu(const Tensor& h, const Tensor& out);
void swiglu_backward(const Tensor& grad, const Tensor& h, const Tensor& dh);
}  // namespace cpu
namespace cuda {
void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void scale(const Tensor& x, double factor, const Tensor& out);
void unary(UnaryOp op, const Tensor& x, const Tensor& out);
void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& out);
void swiglu(const Tensor& h, const Tensor& out);
void swiglu_backward(const Tensor& grad, const Tensor& h, const Tensor& dh);
}  // namespace cuda

}  // namespace coil::kernels
