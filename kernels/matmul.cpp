#include "kernels/matmul.h"

#include "kernels/accumulate.h"
#include "kernels/dispatch.h"
#include "kernels/elementwise.h"

namespace coil::kernels {

namespace {

using CpuProduct = void (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const GemmShape&);

// Checks the operands, resolves the shapes and allocates the result; a CPU product runs
// through `cpu_product`, a GPU product with `epilogue` (and its aux, shaped as the result).
Tensor product(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& bias,
               CpuProduct cpu_product, cuda::GemmEpilogue epilogue = cuda::GemmEpilogue::plain,
               const Tensor& aux = Tensor()) {
  const char* op = "matmul";
  check_defined(op, a, "a");
  check_defined(op, b, "b");
  check_same_device(op, a, b);
  check_same_dtype(op, a, b);
  COIL_CHECK(is_floating(a.dtype()), "matmul: expected floating tensors, got a {} and b {}", describe(a),
             describe(b));
  COIL_CHECK((a.dim() == 2 && b.dim() == 2) || (a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0)),
             "matmul: expects two 2-d tensors or two 3-d tensors with equal batch sizes, got a {} and b {}",
             describe(a), describe(b));
  GemmShape g;
  g.transpose_a = transpose_a;
  g.transpose_b = transpose_b;
  g.batch = a.dim() == 3 ? a.size(0) : 1;
  g.M = transpose_a ? a.size(-1) : a.size(-2);
  int64_t ka = transpose_a ? a.size(-2) : a.size(-1);
  int64_t kb = transpose_b ? b.size(-1) : b.size(-2);
  g.N = transpose_b ? b.size(-2) : b.size(-1);
  g.K = ka;
  COIL_CHECK(ka == kb, "matmul: inner dims differ: a {}{} has {}, b {}{} has {}", describe(a),
             transpose_a ? " (transposed)" : "", ka, describe(b), transpose_b ? " (transposed)" : "", kb);
  if (bias.defined()) {
    check_same_device(op, a, bias);
    check_same_dtype(op, a, bias);
    COIL_CHECK(bias.dim() == 1 && bias.size(0) == g.N, "matmul: bias {} must be [{}] (the output's columns)",
               describe(bias), g.N);
    COIL_CHECK(a.dim() == 2, "matmul: a bias is supported for 2-d products only, got a {}", describe(a));
  }
  Shape out_shape = a.dim() == 3 ? Shape{g.batch, g.M, g.N} : Shape{g.M, g.N};
  Tensor out = Tensor::empty(out_shape, a.dtype(), a.device());
  if (out.numel() == 0) return out;
  if (g.K == 0) {  // an empty sum: zeros (plus the bias)
    out.zero_();
    return bias.defined() ? add(out, bias) : out;
  }
  COIL_DISPATCH(op, a.device(), cpu_product(a, b, bias, out, g), cuda::matmul(a, b, bias, out, g, epilogue, aux));
  return out;
}

// Checks linear's operands; returns its output shape, x's with the last dim `out`.
Shape linear_shape(const char* op, const Tensor& x, const Tensor& weight) {
  check_defined(op, x, "x");
  check_defined(op, weight, "weight");
  COIL_CHECK(weight.dim() == 2, "{}: weight must be [out, in], got {}", op, describe(weight));
  COIL_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "{}: x {} must end in the weight's input size {} (weight {})",
             op, describe(x), weight.size(1), describe(weight));
  Shape out_shape = x.shape();
  out_shape.back() = weight.size(0);
  return out_shape;
}

// Whether a product of output width n and inner size k on t's device takes a GELU epilogue.
bool gelu_epilogue(const Tensor& t, int64_t n, int64_t k) { return t.device().is_cuda() && n % 8 == 0 && k > 0; }

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& bias) {
  return product(a, b, transpose_a, transpose_b, bias, cpu::matmul);
}

Tensor matmul_reference(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& bias) {
  COIL_CHECK(a.device().is_cpu() && b.device().is_cpu(), "matmul_reference: runs on the CPU, got a {} and b {}",
             describe(a), describe(b));
  return product(a, b, transpose_a, transpose_b, bias, cpu::matmul_reference);
}

void matmul_into(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& out,
                 bool accumulate) {
  const char* op = "matmul_into";
  check_defined(op, a, "a");
  check_defined(op, b, "b");
  check_defined(op, out, "out");
  check_same_device(op, a, b);
  check_same_device(op, a, out);
  check_same_dtype(op, a, b);
  COIL_CHECK(a.dim() == 2 && b.dim() == 2 && out.dim() == 2, "{}: expects 2-d a, b and out, got a {}, b {}, out {}",
             op, describe(a), describe(b), describe(out));
  GemmShape g;
  g.transpose_a = transpose_a;
  g.transpose_b = transpose_b;
  g.M = transpose_a ? a.size(1) : a.size(0);
  g.K = transpose_a ? a.size(0) : a.size(1);
  g.N = transpose_b ? b.size(0) : b.size(1);
  const int64_t kb = transpose_b ? b.size(1) : b.size(0);
  COIL_CHECK(g.K == kb && out.size(0) == g.M && out.size(1) == g.N,
             "{}: a {}{} @ b {}{} does not give out {}", op, describe(a), transpose_a ? "^T" : "", describe(b),
             transpose_b ? "^T" : "", describe(out));
  const bool f32_sum = a.dtype() == DType::bf16 && out.dtype() == DType::f32 && out.device().is_cuda();
  COIL_CHECK(out.dtype() == a.dtype() || f32_sum,
             "{}: out {} must have the operands' dtype {} (or be f32 for bf16 operands on the GPU)", op,
             describe(out), dtype_name(a.dtype()));
  if (out.numel() == 0 || (g.K == 0 && accumulate)) return;
  if (g.K == 0) return Tensor(out).zero_();
  if (a.device().is_cpu()) {
    if (!accumulate) return cpu::matmul(a, b, Tensor(), out, g);
    Tensor product = Tensor::empty(out.shape(), out.dtype(), out.device());
    cpu::matmul(a, b, Tensor(), product, g);
    return kernels::accumulate(out, product);
  }
#ifdef COIL_CUDA
  cuda::matmul(a, b, Tensor(), out, g, cuda::GemmEpilogue::plain, Tensor(), accumulate);
#else
  fail("{}: {} is on a GPU, but coil was built without CUDA", op, describe(a));
#endif
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Shape out_shape = linear_shape("linear", x, weight);
  int64_t in = weight.size(1);
  Tensor y = matmul(x.reshape({x.numel() / std::max<int64_t>(in, 1), in}), weight, false, true, bias);
  return y.reshape(out_shape);
}

LinearGelu linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  Shape out_shape = linear_shape("linear_gelu", x, weight);
  const int64_t in = weight.size(1), out_features = weight.size(0);
  if (!gelu_epilogue(x, out_features, in)) {
    Tensor pre = linear(x, weight, bias);
    return {gelu(pre), pre};
  }
  Tensor pre = Tensor::empty({x.numel() / in, out_features}, x.dtype(), x.device());
  Tensor out = product(x.reshape({x.numel() / in, in}), weight, false, true, bias, cpu::matmul,
                       cuda::GemmEpilogue::gelu_aux, pre);
  return {out.reshape(out_shape), pre.reshape(out_shape)};
}

Tensor matmul_dgelu(const Tensor& a, const Tensor& b, const Tensor& pre) {
  const char* op = "matmul_dgelu";
  check_defined(op, a, "a");
  check_defined(op, b, "b");
  check_defined(op, pre, "pre");
  COIL_CHECK(a.dim() == 2 && b.dim() == 2 && pre.shape() == Shape({a.size(0), b.size(1)}),
             "{}: expects a [M, K], b [K, N] and pre [M, N], got a {}, b {} and pre {}", op, describe(a), describe(b),
             describe(pre));
  if (!gelu_epilogue(a, b.size(1), a.size(1))) return unary_backward(UnaryOp::gelu, matmul(a, b), pre);
  check_same_device(op, a, pre);
  check_same_dtype(op, a, pre);
  return product(a, b, false, false, Tensor(), cpu::matmul, cuda::GemmEpilogue::dgelu, pre);
}

}  // namespace coil::kernels
