#include "kernels/matmul.h"

#include "kernels/dispatch.h"
#include "kernels/elementwise.h"

namespace coil::kernels {

namespace {

using CpuProduct = void (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const GemmShape&);

// Checks the operands, resolves the shapes and allocates the result; a CPU product runs
// through `cpu_product`.
Tensor product(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& bias,
               CpuProduct cpu_product) {
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
  COIL_DISPATCH(op, a.device(), cpu_product(a, b, bias, out, g), cuda::matmul(a, b, bias, out, g));
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& bias) {
  return product(a, b, transpose_a, transpose_b, bias, cpu::matmul);
}

Tensor matmul_reference(const Tensor& a, const Tensor& b, bool transpose_a, bool transpose_b, const Tensor& bias) {
  COIL_CHECK(a.device().is_cpu() && b.device().is_cpu(), "matmul_reference: runs on the CPU, got a {} and b {}",
             describe(a), describe(b));
  return product(a, b, transpose_a, transpose_b, bias, cpu::matmul_reference);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  const char* op = "linear";
  check_defined(op, x, "x");
  check_defined(op, weight, "weight");
  COIL_CHECK(weight.dim() == 2, "linear: weight must be [out, in], got {}", describe(weight));
  COIL_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1),
             "linear: x {} must end in the weight's input size {} (weight {})", describe(x), weight.size(1),
             describe(weight));
  int64_t in = weight.size(1), out_features = weight.size(0);
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  Tensor y = matmul(x.reshape({x.numel() / std::max<int64_t>(in, 1), in}), weight, false, true, bias);
  return y.reshape(out_shape);
}

}  // namespace coil::kernels
