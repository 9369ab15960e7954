#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "autograd/functions/reduce.h"
#include "autograd/gradcheck.h"
#include "kernels/accumulate.h"
#include "kernels/elementwise.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
namespace ag = coil::autograd;
using Catch::Matchers::Contains;

namespace {

Tensor f64(const Shape& shape, uint64_t seed) { return test::random_normal(shape, seed, DType::f64); }
Tensor positive(const Shape& shape, uint64_t seed) {  // in [0.5, 1.5]
  Generator gen(seed);
  return uniform(shape, 0.5, 1.5, gen, DType::f64);
}

using Binary = ag::Variable (*)(const ag::Variable&, const ag::Variable&);

}  // namespace

TEST_CASE("binary ops: values and broadcasting", "[elementwise]") {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector<float>({10, 20, 30}, {3});
  REQUIRE(kernels::add(a, b).to_vector<float>() == std::vector<float>{11, 22, 33, 14, 25, 36});
  REQUIRE(kernels::sub(a, b).to_vector<float>() == std::vector<float>{-9, -18, -27, -6, -15, -24});
  REQUIRE(kernels::mul(a, b).to_vector<float>() == std::vector<float>{10, 40, 90, 40, 100, 180});
  REQUIRE(kernels::div(a, a).to_vector<float>() == std::vector<float>{1, 1, 1, 1, 1, 1});
  REQUIRE(kernels::mul(a, Tensor::scalar(2.0)).to_vector<float>() == std::vector<float>{2, 4, 6, 8, 10, 12});
  REQUIRE(kernels::add(a, Tensor::full({1}, 1.0)).to_vector<float>() == std::vector<float>{2, 3, 4, 5, 6, 7});
  REQUIRE(kernels::scale(a, -0.5).to_vector<float>() == std::vector<float>{-0.5f, -1, -1.5f, -2, -2.5f, -3});
  REQUIRE(kernels::add(a, b).shape() == Shape{2, 3});
  REQUIRE(kernels::add(Tensor::empty({0, 3}), b).numel() == 0);
}

TEST_CASE("unary ops: values", "[elementwise]") {
  Tensor x = Tensor::from_vector<double>({-30, -1, 0, 1, 19.5, 25}, {6}, DType::f64);
  auto v = [](const Tensor& t) { return t.to_vector<double>(); };
  for (size_t i = 0; i < 6; ++i) {
    double xi = v(x)[i];
    double s = 1 / (1 + std::exp(-xi));
    REQUIRE(v(kernels::exp(x))[i] == Approx(std::exp(xi)));
    REQUIRE(v(kernels::sigmoid(x))[i] == Approx(s));
    REQUIRE(v(kernels::silu(x))[i] == Approx(xi * s));
    double sp = xi > 20 ? xi : std::log1p(std::exp(xi));
    REQUIRE(v(kernels::softplus(x))[i] == Approx(sp));
  }
  REQUIRE(v(kernels::softplus(x))[5] == 25.0);  // linear above the threshold, as PyTorch
  REQUIRE(v(kernels::gelu(x))[3] == Approx(0.8411919906));  // gelu_tanh(1)
  REQUIRE(v(kernels::gelu(x))[1] == Approx(-0.1588080094));
  REQUIRE(v(kernels::log(kernels::exp(x)))[3] == Approx(1.0));
  Tensor h = kernels::to_dtype(x, DType::bf16);
  REQUIRE(h.dtype() == DType::bf16);
  REQUIRE(h.to_vector<float>()[3] == 1.0f);
  REQUIRE(kernels::to_dtype(x, DType::f64).same_buffer(x));
}

TEST_CASE("binary ops: gradcheck, full and broadcast shapes", "[elementwise][gradcheck]") {
  struct Case {
    const char* name;
    Binary op;
  };
  for (Case c : {Case{"add", ag::add}, Case{"sub", ag::sub}, Case{"mul", ag::mul}, Case{"div", ag::div}}) {
    for (Shape bs : {Shape{2, 3, 4}, Shape{3, 4}, Shape{4}, Shape{1}, Shape{}}) {
      INFO(c.name << " with b " << shape_str(bs));
      Tensor a = f64({2, 3, 4}, 1);
      Tensor b = std::string(c.name) == "div" ? positive(bs, 2) : f64(bs, 2);
      test::require_gradcheck([&](const std::vector<ag::Variable>& v) { return c.op(v[0], v[1]); }, {a, b});
    }
  }
}

TEST_CASE("binary ops: an operand used twice, one side without grad", "[elementwise][gradcheck]") {
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::mul(v[0], v[0]); }, {f64({5}, 3)});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::div(v[0], v[0]); }, {positive({5}, 3)});
  // b is a constant: only a's gradient exists, and it is right.
  ag::Variable a(f64({3, 2}, 4), true);
  ag::Variable b(f64({2}, 5), false);
  ag::sum_all(ag::mul(a, b)).backward();
  REQUIRE_FALSE(b.grad().defined());
  std::vector<double> ga = a.grad().to_vector<double>(), bv = b.value().to_vector<double>();
  for (size_t i = 0; i < 6; ++i) REQUIRE(ga[i] == bv[i % 2]);
}

TEST_CASE("unary ops and scale: gradcheck", "[elementwise][gradcheck]") {
  using Unary = ag::Variable (*)(const ag::Variable&);
  struct Case {
    const char* name;
    Unary op;
  };
  for (Case c : {Case{"exp", ag::exp}, Case{"sigmoid", ag::sigmoid}, Case{"silu", ag::silu},
                 Case{"gelu", ag::gelu}, Case{"softplus", ag::softplus}}) {
    INFO(c.name);
    test::require_gradcheck([&](const std::vector<ag::Variable>& v) { return c.op(v[0]); }, {f64({3, 7}, 6)});
  }
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::log(v[0]); }, {positive({3, 7}, 7)});
  // softplus on both sides of its threshold (20): the gradient is sigmoid(x) below, 1 above.
  Tensor around = Tensor::from_vector<double>({-3, 0.5, 18, 19.9, 20.1, 24}, {6}, DType::f64);
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::softplus(v[0]); }, {around});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::scale(v[0], -2.5); }, {f64({4}, 8)});
}

TEST_CASE("to_dtype: the gradient is cast back", "[elementwise][gradcheck]") {
  ag::GradcheckOptions loose;
  loose.eps = 1e-2;  // the function is linear; f32 rounding needs a larger step
  loose.atol = 1e-4;
  test::require_gradcheck(
      [](const std::vector<ag::Variable>& v) {
        return ag::to_dtype(ag::scale(ag::to_dtype(v[0], DType::f32), 3.0), DType::f64);
      },
      {f64({6}, 9)}, loose);
  ag::Variable x(Tensor::ones({4}, DType::f32), true);
  ag::Variable y = ag::to_dtype(x, DType::bf16);
  REQUIRE(y.dtype() == DType::bf16);
  y.backward(Tensor::ones({4}, DType::bf16));  // (the CPU kernels compute in f32/f64 only)
  REQUIRE(x.grad().dtype() == DType::f32);
  REQUIRE(x.grad().to_vector<float>() == std::vector<float>{1, 1, 1, 1});
}

TEST_CASE("element-wise ops: bad inputs give clear errors", "[elementwise][errors]") {
  Tensor a = Tensor::zeros({2, 3});
  REQUIRE_THROWS_WITH(kernels::add(a, Tensor::zeros({2})),
                      Contains("add: b must have a's shape, a suffix of it, or one element") &&
                          Contains("f32[2, 3] cpu") && Contains("f32[2] cpu"));
  REQUIRE_THROWS_WITH(kernels::mul(a, Tensor::zeros({2, 3, 1})), Contains("mul: b must have"));
  REQUIRE_THROWS_WITH(kernels::sub(a, Tensor::zeros({3}, DType::f64)),
                      Contains("sub: dtypes differ") && Contains("f64[3] cpu"));
  REQUIRE_THROWS_WITH(kernels::div(a, Tensor()), Contains("div: b is an undefined tensor"));
  REQUIRE_THROWS_WITH(kernels::exp(Tensor::zeros({2}, DType::i64)), Contains("exp: expected a floating tensor"));
  REQUIRE_THROWS_WITH(kernels::add(Tensor::zeros({2}, DType::i32), Tensor::zeros({2}, DType::i32)),
                      Contains("add: expected a floating tensor"));
  REQUIRE_THROWS_WITH(kernels::gelu(Tensor::zeros({2}, DType::bf16)), Contains("the CPU reference takes f32 or f64"));
  REQUIRE_THROWS_WITH(ag::to_dtype(ag::Variable(Tensor::zeros({2})), DType::i32), Contains("to_dtype"));
}

TEST_CASE("swiglu: the same bits as split + silu + mul, forward and backward", "[elementwise]") {
  // The fused op repeats the unfused ops' arithmetic in their order, so a model's CPU losses do
  // not change when its MLP takes it.
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(dtype_name(dtype));
    Tensor h = test::random_normal({3, 5, 14}, 9, dtype), g = test::random_normal({3, 5, 7}, 10, dtype);
    ag::Variable fused_in(h, true), split_in(h, true);
    ag::Variable fused = ag::swiglu(fused_in);
    std::vector<ag::Variable> parts = ag::split(split_in, {7, 7}, 2);
    ag::Variable unfused = ag::mul(parts[0], ag::silu(parts[1]));
    REQUIRE(fused.shape() == Shape{3, 5, 7});
    REQUIRE(test::bitwise_equal(fused.value(), unfused.value()));
    fused.backward(g);
    unfused.backward(g);
    REQUIRE(test::bitwise_equal(fused_in.grad(), split_in.grad()));
  }
  // Against the math, rows (a | g) with n = 1: a * g / (1 + e^-g).
  Tensor h = Tensor::from_vector<double>({2, -1, 0.5, 0, 3, 4}, {3, 2}, DType::f64);
  std::vector<double> y = kernels::swiglu(h).to_vector<double>();
  REQUIRE(y[0] == Approx(2 * -1 / (1 + std::exp(1.0))));
  REQUIRE(y[1] == Approx(0.0));
  REQUIRE(y[2] == Approx(3 * 4 / (1 + std::exp(-4.0))));
}

TEST_CASE("swiglu: gradcheck and bad shapes", "[elementwise][gradcheck]") {
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::swiglu(v[0]); }, {f64({2, 3, 10}, 11)});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::swiglu(v[0]); }, {f64({2}, 12)});
  REQUIRE_THROWS_WITH(kernels::swiglu(Tensor::zeros({4, 7})),
                      Contains("swiglu: h must be [..., 2n], the two halves (a | g)") && Contains("f32[4, 7] cpu"));
  REQUIRE_THROWS_WITH(kernels::swiglu(Tensor::zeros({4, 6}, DType::i32)), Contains("swiglu: expected a floating tensor"));
  REQUIRE_THROWS_WITH(kernels::swiglu_backward(Tensor::zeros({4, 6}), Tensor::zeros({4, 6})),
                      Contains("swiglu backward: grad must be h's shape with half its last dim ([4, 3])") &&
                          Contains("f32[4, 6] cpu"));
}

// ---- GPU against the CPU reference ----

namespace {

// Random inputs for a dtype: drawn in f32, rounded to the dtype (so the CPU sees the same values).
Tensor draw(const Shape& shape, uint64_t seed, DType dtype, bool make_positive = false) {
  Tensor t = test::random_normal(shape, seed, DType::f32);
  if (make_positive) t = kernels::add(kernels::scale(kernels::sigmoid(t), 2.0), Tensor::scalar(0.25));
  return t.to(dtype).to(DType::f32);
}

double tolerance(DType dtype) { return dtype == DType::bf16 ? 1e-2 : 1e-5; }

void compare(const Tensor& gpu, const Tensor& cpu_ref, DType dtype, const std::string& what) {
  REQUIRE(gpu.device().is_cuda());
  REQUIRE(gpu.dtype() == dtype);
  REQUIRE(gpu.shape() == cpu_ref.shape());
  double err = test::relative_error(gpu.to(Device::cpu(), DType::f32), cpu_ref);
  INFO(what << " " << dtype_name(dtype) << " " << shape_str(cpu_ref.shape()) << ": relative error " << err);
  REQUIRE(err <= tolerance(dtype));
}

}  // namespace

TEST_CASE("element-wise ops: GPU matches CPU at awkward sizes", "[elementwise][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (Shape shape : {Shape{1}, Shape{7}, Shape{3, 5, 7}, Shape{1000003}, Shape{129, 4099}}) {
      Shape bshape = shape.size() > 1 ? Shape(shape.begin() + 1, shape.end()) : Shape{1};
      Tensor a = draw(shape, 1, dtype), b = draw(bshape, 2, dtype, true), g = draw(shape, 3, dtype);
      Tensor ad = a.to(gpu, dtype), bd = b.to(gpu, dtype), gd = g.to(gpu, dtype);
      for (kernels::BinaryOp op : {kernels::BinaryOp::add, kernels::BinaryOp::sub, kernels::BinaryOp::mul,
                                   kernels::BinaryOp::div}) {
        compare(kernels::binary(op, ad, bd), kernels::binary(op, a, b), dtype, kernels::binary_op_name(op));
        compare(kernels::binary(op, ad, ad), kernels::binary(op, a, a), dtype, kernels::binary_op_name(op));
      }
      compare(kernels::scale(ad, 0.3), kernels::scale(a, 0.3), dtype, "scale");
      Tensor p = draw(shape, 4, dtype, true), pd = p.to(gpu, dtype);
      for (kernels::UnaryOp op : {kernels::UnaryOp::exp, kernels::UnaryOp::log, kernels::UnaryOp::sigmoid,
                                  kernels::UnaryOp::silu, kernels::UnaryOp::gelu, kernels::UnaryOp::softplus}) {
        const Tensor& x = op == kernels::UnaryOp::log ? p : a;
        const Tensor& xd = op == kernels::UnaryOp::log ? pd : ad;
        compare(kernels::unary(op, xd), kernels::unary(op, x), dtype, kernels::unary_op_name(op));
        compare(kernels::unary_backward(op, gd, xd), kernels::unary_backward(op, g, x), dtype,
                std::string(kernels::unary_op_name(op)) + " backward");
      }
    }
  }
  // softplus above its threshold, on the GPU too
  Tensor big = Tensor::from_vector<float>({19.0f, 21.0f, 50.0f}, {3});
  compare(kernels::softplus(big.to(gpu)), kernels::softplus(big), DType::f32, "softplus");
}

TEST_CASE("swiglu: GPU matches CPU, 16-byte packs and single elements", "[elementwise][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16})
    // n = 2048 and 24: packs of 16 bytes; n = 13 and 1: one element a thread.
    for (Shape shape : {Shape{4, 33, 4096}, Shape{5, 48}, Shape{3, 7, 26}, Shape{9, 2}}) {
      Shape half = shape;
      half.back() /= 2;
      Tensor h = draw(shape, 20, dtype), g = draw(half, 21, dtype);
      Tensor hd = h.to(gpu, dtype), gd = g.to(gpu, dtype);
      compare(kernels::swiglu(hd), kernels::swiglu(h), dtype, "swiglu");
      compare(kernels::swiglu_backward(gd, hd), kernels::swiglu_backward(g, h), dtype, "swiglu backward");
    }
}

TEST_CASE("accumulate: GPU matches CPU bitwise, in 16-byte packs and one element at a time", "[elementwise][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t n : {int64_t(1), int64_t(7), int64_t(8), int64_t(4099), int64_t(1) << 20})
      for (int64_t offset : {0, 1}) {  // 1: views one element in, not 16-byte aligned
        INFO(dtype_name(dtype) << " n " << n << " offset " << offset);
        const size_t at = size_t(offset) * dtype_size(dtype);
        Tensor dst_all = test::random_normal({n + offset}, 1, dtype), src_all = test::random_normal({n + offset}, 2, dtype);
        Tensor dst = dst_all.view_bytes(at, {n}, dtype), src = src_all.view_bytes(at, {n}, dtype);
        Tensor dst_gpu = dst_all.to(gpu).view_bytes(at, {n}, dtype), src_gpu = src_all.to(gpu).view_bytes(at, {n}, dtype);
        kernels::accumulate(dst, src);
        kernels::accumulate(dst_gpu, src_gpu);
        REQUIRE(test::bitwise_equal(dst_gpu, dst));
      }
}

TEST_CASE("element-wise ops: autograd on the GPU, broadcast gradient", "[elementwise][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16}) {
    Tensor a = draw({33, 65}, 5, dtype), b = draw({65}, 6, dtype, true);
    ag::Variable ac(a, true), bc(b, true);
    ag::Variable ad(a.to(gpu, dtype), true), bd(b.to(gpu, dtype), true);
    ag::sum_all(ag::div(ag::mul(ac, bc), bc)).backward();
    ag::sum_all(ag::div(ag::mul(ad, bd), bd)).backward();
    compare(ad.grad(), ac.grad(), dtype, "d/da");
    REQUIRE(test::max_abs_difference(bd.grad().to(DType::f32), bc.grad()) < (dtype == DType::bf16 ? 0.3 : 1e-3));
  }
}

TEST_CASE("element-wise ops: mixed devices are an error", "[elementwise][cuda][errors]") {
  Tensor a = Tensor::zeros({4}), b = Tensor::zeros({4}, DType::f32, Device::cuda(0));
  REQUIRE_THROWS_WITH(kernels::add(a, b), Contains("add: tensors on different devices") && Contains("cuda:0"));
  REQUIRE_THROWS_WITH(kernels::unary_backward(kernels::UnaryOp::exp, a, b), Contains("different devices"));
}
