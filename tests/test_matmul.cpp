#include <tuple>
#include <vector>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "autograd/functions/matmul.h"
#include "autograd/functions/reduce.h"
#include "autograd/gradcheck.h"
#include "kernels/accumulate.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
namespace ag = coil::autograd;
using Catch::Matchers::Contains;

namespace {

// The stored shape of an operand whose product shape is [rows, cols] (transposed: [cols, rows]).
Shape stored(int64_t batch, int64_t rows, int64_t cols, bool transposed) {
  Shape s = transposed ? Shape{cols, rows} : Shape{rows, cols};
  if (batch > 0) s.insert(s.begin(), batch);
  return s;
}

}  // namespace

TEST_CASE("matmul and linear: values", "[matmul]") {
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector<float>({1, 0, 0, 1, 1, 1}, {3, 2});
  REQUIRE(kernels::matmul(a, b).to_vector<float>() == std::vector<float>{4, 5, 10, 11});
  REQUIRE(kernels::matmul(a, a, false, true).to_vector<float>() == std::vector<float>{14, 32, 32, 77});
  REQUIRE(kernels::matmul(a, a, true, false).shape() == Shape{3, 3});
  REQUIRE(kernels::matmul(b, a, true, true).to_vector<float>() == std::vector<float>{4, 10, 5, 11});
  Tensor bias = Tensor::from_vector<float>({100, 200}, {2});
  REQUIRE(kernels::matmul(a, b, false, false, bias).to_vector<float>() == std::vector<float>{104, 205, 110, 211});
  // linear: x [2, 1, 3] @ W[2, 3]^T + bias
  Tensor w = Tensor::from_vector<float>({1, 0, 0, 0, 1, 1}, {2, 3});
  Tensor y = kernels::linear(a.reshape({2, 1, 3}), w, bias);
  REQUIRE(y.shape() == Shape{2, 1, 2});
  REQUIRE(y.to_vector<float>() == std::vector<float>{101, 205, 104, 211});
  Tensor batched = kernels::matmul(Tensor::ones({3, 2, 4}), Tensor::ones({3, 4, 5}));
  REQUIRE(batched.shape() == Shape{3, 2, 5});
  for (float v : batched.to_vector<float>()) REQUIRE(v == 4);
  // empty inner dim: zeros plus bias
  REQUIRE(kernels::matmul(Tensor::zeros({2, 0}), Tensor::zeros({0, 2}), false, false, bias).to_vector<float>() ==
          std::vector<float>{100, 200, 100, 200});
}

TEST_CASE("matmul on the CPU (OpenBLAS when built with it) matches the plain-loop reference", "[matmul]") {
  // Sizes across the 64-row blocks; f32 through BLAS accumulates in f32, the reference in f64.
  const bool blas = !kernels::cpu::blas_name().empty();
  INFO("BLAS: " << (blas ? kernels::cpu::blas_name() : "none"));
  for (DType dtype : {DType::f32, DType::f64})
    for (int64_t batch : {0, 3})
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (bool with_bias : {false, true}) {
            if (batch > 0 && with_bias) continue;  // a bias is for 2-d products
            const int64_t M = 131, K = 77, N = 45;
            INFO(dtype_name(dtype) << " batch " << batch << " ta " << ta << " tb " << tb << " bias " << with_bias);
            Tensor a = test::random_normal(stored(batch, M, K, ta), 21, dtype);
            Tensor b = test::random_normal(stored(batch, K, N, tb), 22, dtype);
            Tensor bias = with_bias ? test::random_normal({N}, 23, dtype) : Tensor();
            Tensor fast = kernels::matmul(a, b, ta, tb, bias), reference = kernels::matmul_reference(a, b, ta, tb, bias);
            REQUIRE(fast.shape() == reference.shape());
            if (blas)
              REQUIRE(test::relative_error(fast, reference) < (dtype == DType::f32 ? 1e-6 : 1e-14));
            else
              REQUIRE(test::bitwise_equal(fast, reference));
          }
  // NaN and infinity reach the output as in the reference.
  Tensor a = Tensor::from_vector<float>({1, NAN, 2, 3}, {2, 2}), b = Tensor::from_vector<float>({INFINITY, 1, 0, 1}, {2, 2});
  std::vector<float> fast = kernels::matmul(a, b).to_vector<float>(), reference = kernels::matmul_reference(a, b).to_vector<float>();
  for (size_t i = 0; i < fast.size(); ++i) {
    INFO("element " << i << ": " << fast[i] << " vs " << reference[i]);
    REQUIRE((fast[i] == reference[i] || (std::isnan(fast[i]) && std::isnan(reference[i]))));
  }
}

TEST_CASE("matmul: gradcheck for every transpose, 2-d and batched", "[matmul][gradcheck]") {
  const int64_t M = 3, K = 4, N = 5;
  for (int64_t batch : {0, 2})
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        INFO("batch " << batch << " ta " << ta << " tb " << tb);
        Tensor a = test::random_normal(stored(batch, M, K, ta), 1, DType::f64);
        Tensor b = test::random_normal(stored(batch, K, N, tb), 2, DType::f64);
        test::require_gradcheck([&](const std::vector<ag::Variable>& v) { return ag::matmul(v[0], v[1], ta, tb); },
                                {a, b});
      }
  // a product of a matrix with itself
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::matmul(v[0], v[0], false, true); },
                          {test::random_normal({3, 4}, 3, DType::f64)});
}

TEST_CASE("linear: gradcheck with and without bias", "[matmul][gradcheck]") {
  Tensor x = test::random_normal({2, 3, 4}, 4, DType::f64);
  Tensor w = test::random_normal({5, 4}, 5, DType::f64);
  Tensor b = test::random_normal({5}, 6, DType::f64);
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::linear(v[0], v[1], v[2]); }, {x, w, b});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::linear(v[0], v[1]); }, {x, w});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::linear(v[0], v[1], v[2]); },
                          {test::random_normal({4}, 7, DType::f64), w, b});
  // only the weight requires a gradient
  ag::Variable xv(x.to(DType::f32)), wv(w.to(DType::f32), true);
  ag::Variable y = ag::linear(xv, wv);
  y.backward(Tensor::ones(y.shape()));
  REQUIRE(wv.grad().shape() == Shape{5, 4});
  REQUIRE_FALSE(xv.grad().defined());
}

TEST_CASE("gelu_mlp: the same bits as linear + gelu + linear on the CPU; gradcheck", "[matmul][gradcheck]") {
  // The fused op runs the separate ops' kernels on the CPU, so GPT-2's CPU losses do not change.
  Tensor x = test::random_normal({2, 3, 8}, 11), g = test::random_normal({2, 3, 6}, 12);
  Tensor w1 = test::random_normal({12, 8}, 13, DType::f32, Device::cpu(), 0.3), b1 = test::random_normal({12}, 14);
  Tensor w2 = test::random_normal({6, 12}, 15, DType::f32, Device::cpu(), 0.3), b2 = test::random_normal({6}, 16);
  std::vector<ag::Variable> fused, split;
  for (const Tensor& t : {x, w1, b1, w2, b2}) {
    fused.emplace_back(t, true);
    split.emplace_back(t, true);
  }
  ag::Variable yf = ag::gelu_mlp(fused[0], fused[1], fused[2], fused[3], fused[4]);
  ag::Variable ys = ag::linear(ag::gelu(ag::linear(split[0], split[1], split[2])), split[3], split[4]);
  REQUIRE(test::bitwise_equal(yf.value(), ys.value()));
  yf.backward(g);
  ys.backward(g);
  for (size_t i = 0; i < fused.size(); ++i) {
    INFO("input " << i);
    REQUIRE(test::bitwise_equal(fused[i].grad(), split[i].grad()));
  }
  kernels::LinearGelu lg = kernels::linear_gelu(x, w1, b1);
  REQUIRE(test::bitwise_equal(lg.pre, kernels::linear(x, w1, b1)));
  REQUIRE(test::bitwise_equal(lg.out, kernels::gelu(lg.pre)));

  Tensor xd = test::random_normal({2, 3, 4}, 17, DType::f64), w1d = test::random_normal({5, 4}, 18, DType::f64);
  Tensor b1d = test::random_normal({5}, 19, DType::f64), w2d = test::random_normal({3, 5}, 20, DType::f64);
  Tensor b2d = test::random_normal({3}, 21, DType::f64);
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::gelu_mlp(v[0], v[1], v[2], v[3], v[4]); },
                          {xd, w1d, b1d, w2d, b2d});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::gelu_mlp(v[0], v[1], {}, v[2], {}); },
                          {xd, w1d, w2d});
  REQUIRE_THROWS_WITH(kernels::linear_gelu(Tensor::zeros({2, 4}), Tensor::zeros({5, 3})),
                      Contains("linear_gelu: x f32[2, 4] cpu must end in the weight's input size 3"));
  REQUIRE_THROWS_WITH(kernels::matmul_dgelu(Tensor::zeros({2, 3}), Tensor::zeros({3, 4}), Tensor::zeros({2, 5})),
                      Contains("matmul_dgelu: expects a [M, K], b [K, N] and pre [M, N]") && Contains("pre f32[2, 5] cpu"));
}

TEST_CASE("matmul_into: a product written into, or added to, an existing tensor", "[matmul]") {
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO("ta " << ta << " tb " << tb);
      Tensor a = test::random_normal(stored(0, 70, 33, ta), 1), b = test::random_normal(stored(0, 33, 9, tb), 2);
      Tensor product = kernels::matmul(a, b, ta, tb);
      // Into rows [2, 72) of a bigger tensor: the other rows keep their values.
      Tensor big = test::random_normal({75, 9}, 3), before = big.clone();
      Tensor rows = big.narrow0(2, 72);
      kernels::matmul_into(a, b, ta, tb, rows);
      REQUIRE(test::bitwise_equal(rows, product));
      REQUIRE(test::bitwise_equal(big.narrow0(0, 2), before.narrow0(0, 2)));
      REQUIRE(test::bitwise_equal(big.narrow0(72, 75), before.narrow0(72, 75)));
      // Accumulating: the bits of a product followed by an add.
      Tensor sum = before.narrow0(2, 72).clone(), expect = sum.clone();
      kernels::accumulate(expect, product);
      kernels::matmul_into(a, b, ta, tb, sum, /*accumulate=*/true);
      REQUIRE(test::bitwise_equal(sum, expect));
    }
  // An empty inner dim: zeros, or nothing added.
  Tensor out = Tensor::full({2, 3}, 5.0);
  kernels::matmul_into(Tensor::zeros({2, 0}), Tensor::zeros({0, 3}), false, false, out, true);
  REQUIRE(out.to_vector<float>() == std::vector<float>(6, 5.0f));
  kernels::matmul_into(Tensor::zeros({2, 0}), Tensor::zeros({0, 3}), false, false, out);
  REQUIRE(out.to_vector<float>() == std::vector<float>(6, 0.0f));
  REQUIRE_THROWS_WITH(kernels::matmul_into(Tensor::zeros({2, 3}), Tensor::zeros({3, 4}), false, false, Tensor::zeros({2, 5})),
                      Contains("matmul_into: a f32[2, 3] cpu @ b f32[3, 4] cpu does not give out f32[2, 5] cpu"));
  REQUIRE_THROWS_WITH(kernels::matmul_into(Tensor::zeros({2, 3}), Tensor::zeros({3, 4}), false, false,
                                           Tensor::zeros({2, 4}, DType::f64)),
                      Contains("out f64[2, 4] cpu must have the operands' dtype f32"));
}

TEST_CASE("linear_split: the pieces of linear, gradients summed in the products", "[matmul]") {
  Tensor x = test::random_normal({2, 7, 6}, 1), w = test::random_normal({9, 6}, 2), b = test::random_normal({9}, 3);
  // The reference: what Linear::forward_split did before, a linear per block of the weight's
  // rows (the engine then adds the x gradients, newest first, and concatenates the weight's).
  for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{4, 5}, std::vector<int64_t>{3, 5, 1}})
    for (bool bias : {false, true}) {
      INFO("pieces " << sizes.size() << " bias " << bias);
      ag::Variable x1(x, true), w1(w, true), b1(b, true), x2(x, true), w2(w, true), b2(b, true);
      std::vector<ag::Variable> pieces = ag::linear_split(x1, w1, bias ? b1 : ag::Variable(), sizes);
      std::vector<ag::Variable> w_rows = ag::split(w2, sizes, 0), b_rows = ag::split(b2, sizes, 0);
      ag::Variable loss, loss_ref;
      for (size_t i = 0; i < sizes.size(); ++i) {
        ag::Variable reference = ag::linear(x2, w_rows[i], bias ? b_rows[i] : ag::Variable());
        REQUIRE(test::bitwise_equal(pieces[i].value(), reference.value()));
        ag::Variable g(test::random_normal(reference.shape(), 10 + i));
        ag::Variable term = ag::sum_all(ag::mul(pieces[i], g)), term_ref = ag::sum_all(ag::mul(reference, g));
        loss = loss.defined() ? ag::add(loss, term) : term;
        loss_ref = loss_ref.defined() ? ag::add(loss_ref, term_ref) : term_ref;
      }
      loss.backward();
      loss_ref.backward();
      // Two pieces: the same bits (a + b rounds as b + a); three: the sum in another order.
      if (sizes.size() == 2)
        REQUIRE(test::bitwise_equal(x1.grad(), x2.grad()));
      else
        REQUIRE(test::relative_error(x1.grad(), x2.grad()) <= 1e-6);
      REQUIRE(test::bitwise_equal(w1.grad(), w2.grad()));
      if (bias) REQUIRE(test::bitwise_equal(b1.grad(), b2.grad()));
    }
  const std::vector<int64_t> sizes{3, 5, 1};
  auto f = [&](const std::vector<ag::Variable>& v) {
    return ag::concat(ag::linear_split(v[0], v[1], v.size() > 2 ? v[2] : ag::Variable(), sizes), -1);
  };
  test::require_gradcheck(f, {x.to(DType::f64), w.to(DType::f64), b.to(DType::f64)});
  test::require_gradcheck(f, {x.to(DType::f64), w.to(DType::f64)});
  REQUIRE_THROWS_WITH(ag::linear_split(ag::Variable(x), ag::Variable(w), ag::Variable(), {3, 5}),
                      Contains("linear_split: the pieces add up to 8 rows, but the weight is f32[9, 6] cpu"));
}

TEST_CASE("matmul: bad inputs give clear errors", "[matmul][errors]") {
  Tensor a = Tensor::zeros({2, 3}), b = Tensor::zeros({4, 5});
  REQUIRE_THROWS_WITH(kernels::matmul(a, b), Contains("matmul: inner dims differ: a f32[2, 3] cpu has 3, b f32[4, 5] cpu has 4"));
  REQUIRE_THROWS_WITH(kernels::matmul(a, b, true, false), Contains("(transposed) has 2"));
  REQUIRE_THROWS_WITH(kernels::matmul(a, Tensor::zeros({3, 2}, DType::f64)), Contains("matmul: dtypes differ"));
  REQUIRE_THROWS_WITH(kernels::matmul(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 3, 2})),
                      Contains("two 3-d tensors with equal batch sizes, got a f32[2, 2, 3] cpu and b f32[3, 3, 2] cpu"));
  REQUIRE_THROWS_WITH(kernels::matmul(Tensor::zeros({3}), Tensor::zeros({3, 2})), Contains("two 2-d tensors"));
  REQUIRE_THROWS_WITH(kernels::matmul(a, Tensor::zeros({3, 2}), false, false, Tensor::zeros({3})),
                      Contains("matmul: bias f32[3] cpu must be [2]"));
  REQUIRE_THROWS_WITH(kernels::linear(Tensor::zeros({2, 4}), Tensor::zeros({5, 3})),
                      Contains("linear: x f32[2, 4] cpu must end in the weight's input size 3"));
  REQUIRE_THROWS_WITH(kernels::linear(Tensor::zeros({2, 4}), Tensor::zeros({4})), Contains("linear: weight must be [out, in]"));
  REQUIRE_THROWS_WITH(kernels::matmul(Tensor::zeros({2, 2}, DType::bf16), Tensor::zeros({2, 2}, DType::bf16)),
                      Contains("CPU reference takes f32 or f64"));
}

TEST_CASE("matmul: GPU (cuBLASLt) matches CPU, forward and backward", "[matmul][cuda]") {
  Device gpu = Device::cuda(0);
  struct Size {
    int64_t batch, M, K, N;
  };
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::bf16 ? 1e-2 : 1e-5;
    for (Size s : {Size{0, 1, 1, 1}, Size{0, 7, 13, 5}, Size{0, 33, 65, 127}, Size{0, 257, 1000, 300},
                   Size{3, 17, 31, 9}, Size{2, 64, 128, 96}})
      for (bool ta : {false, true})
        for (bool tb : {false, true}) {
          INFO(dtype_name(dtype) << " batch " << s.batch << " M " << s.M << " K " << s.K << " N " << s.N << " ta "
                                 << ta << " tb " << tb);
          Tensor a = test::random_normal(stored(s.batch, s.M, s.K, ta), 1).to(dtype).to(DType::f32);
          Tensor b = test::random_normal(stored(s.batch, s.K, s.N, tb), 2).to(dtype).to(DType::f32);
          ag::Variable ac(a, true), bc(b, true), ad(a.to(gpu, dtype), true), bd(b.to(gpu, dtype), true);
          ag::Variable yc = ag::matmul(ac, bc, ta, tb), yd = ag::matmul(ad, bd, ta, tb);
          REQUIRE(yd.dtype() == dtype);
          REQUIRE(test::relative_error(yd.value(), yc.value()) <= tol);
          Tensor g = test::random_normal(yc.shape(), 3).to(dtype).to(DType::f32);
          yc.backward(g);
          yd.backward(g.to(gpu, dtype));
          REQUIRE(test::relative_error(ad.grad(), ac.grad()) <= tol);
          REQUIRE(test::relative_error(bd.grad(), bc.grad()) <= tol);
        }
  }
}

TEST_CASE("matmul_into: GPU matches CPU, bf16 products summed in an f32 tensor", "[matmul][cuda]") {
  Device gpu = Device::cuda(0);
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      INFO("ta " << ta << " tb " << tb);
      // Rounded to bf16 first, so that the CPU's f32 product is the exact reference.
      Tensor a = test::random_normal(stored(0, 257, 1000, ta), 1).to(DType::bf16).to(DType::f32);
      Tensor b = test::random_normal(stored(0, 1000, 300, tb), 2).to(DType::bf16).to(DType::f32);
      Tensor start = test::random_normal({257, 300}, 3);
      Tensor expect = start.clone();
      kernels::matmul_into(a, b, ta, tb, expect, true);
      kernels::matmul_into(a, b, ta, tb, expect, true);  // twice: start + 2 a b
      Tensor sum = start.to(gpu);
      Tensor ad = a.to(gpu, DType::bf16), bd = b.to(gpu, DType::bf16);
      kernels::matmul_into(ad, bd, ta, tb, sum, true);
      kernels::matmul_into(ad, bd, ta, tb, sum, true);
      REQUIRE(sum.dtype() == DType::f32);
      REQUIRE(test::relative_error(sum, expect) <= 1e-5);
      // bf16 out, accumulated into rows of a bigger tensor.
      Tensor big = Tensor::zeros({259, 300}, DType::bf16, gpu);
      kernels::matmul_into(ad, bd, ta, tb, big.narrow0(1, 258));
      kernels::matmul_into(ad, bd, ta, tb, big.narrow0(1, 258), true);
      Tensor twice = kernels::scale(kernels::matmul(a, b, ta, tb), 2.0);
      REQUIRE(test::relative_error(big.narrow0(1, 258), twice) <= 1e-2);
      REQUIRE(big.narrow0(0, 1).to(DType::f32).to_vector<float>() == std::vector<float>(300, 0.0f));
    }
  REQUIRE_THROWS_WITH(kernels::matmul_into(Tensor::zeros({2, 3}, DType::f32, gpu), Tensor::zeros({3, 4}, DType::f32, gpu),
                                           false, false, Tensor::zeros({2, 4}, DType::bf16, gpu)),
                      Contains("must have the operands' dtype f32"));
}

TEST_CASE("linear_split: GPU matches CPU, forward and backward", "[matmul][cuda]") {
  Device gpu = Device::cuda(0);
  const std::vector<int64_t> sizes{1536, 1536};
  Tensor x = test::random_normal({2, 97, 768}, 4).to(DType::bf16).to(DType::f32);
  Tensor w = test::random_normal({3072, 768}, 5, DType::f32, Device::cpu(), 0.05).to(DType::bf16).to(DType::f32);
  ag::Variable xc(x, true), wc(w, true), xd(x.to(gpu, DType::bf16), true), wd(w.to(gpu, DType::bf16), true);
  std::vector<ag::Variable> yc = ag::linear_split(xc, wc, ag::Variable(), sizes);
  std::vector<ag::Variable> yd = ag::linear_split(xd, wd, ag::Variable(), sizes);
  ag::Variable lc, ld;
  for (size_t i = 0; i < sizes.size(); ++i) {
    REQUIRE(test::relative_error(yd[i].value(), yc[i].value()) <= 1e-2);
    Tensor g = test::random_normal(yc[i].shape(), 6 + i).to(DType::bf16).to(DType::f32);
    ag::Variable tc = ag::sum_all(ag::mul(yc[i], ag::Variable(g)));
    ag::Variable td = ag::sum_all(ag::mul(yd[i], ag::Variable(g.to(gpu, DType::bf16))));
    lc = lc.defined() ? ag::add(lc, tc) : tc;
    ld = ld.defined() ? ag::add(ld, td) : td;
  }
  lc.backward();
  ld.backward();
  REQUIRE(test::relative_error(xd.grad(), xc.grad()) <= 1e-2);
  REQUIRE(test::relative_error(wd.grad(), wc.grad()) <= 1e-2);
}

TEST_CASE("linear: GPU bias epilogue matches CPU, with misaligned views", "[matmul][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::bf16 ? 1e-2 : 1e-5;
    for (auto [rows, in, out] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {5, 7, 3}, {2 * 97, 768, 1536}, {33, 64, 50277}}) {
      INFO(dtype_name(dtype) << " rows " << rows << " in " << in << " out " << out);
      Tensor x = test::random_normal({rows, in}, 4).to(dtype).to(DType::f32);
      Tensor w = test::random_normal({out, in}, 5, DType::f32, Device::cpu(), 0.05).to(dtype).to(DType::f32);
      Tensor b = test::random_normal({out}, 6).to(dtype).to(DType::f32);
      ag::Variable xc(x, true), wc(w, true), bc(b, true);
      ag::Variable xd(x.to(gpu, dtype), true), wd(w.to(gpu, dtype), true), bd(b.to(gpu, dtype), true);
      ag::Variable yc = ag::linear(xc, wc, bc), yd = ag::linear(xd, wd, bd);
      REQUIRE(test::relative_error(yd.value(), yc.value()) <= tol);
      Tensor g = test::random_normal(yc.shape(), 7).to(dtype).to(DType::f32);
      yc.backward(g);
      yd.backward(g.to(gpu, dtype));
      REQUIRE(test::relative_error(xd.grad(), xc.grad()) <= tol);
      REQUIRE(test::relative_error(wd.grad(), wc.grad()) <= tol);
      REQUIRE(test::relative_error(bd.grad(), bc.grad()) <= tol);
    }
    // operands starting at odd element offsets (views of a bigger buffer)
    Tensor big = test::random_normal({1 + 5 * 7}, 8).to(gpu, dtype);
    Tensor x = big.view_bytes(dtype_size(dtype), {5, 7}, dtype);
    Tensor w = test::random_normal({3, 7}, 9).to(gpu, dtype);
    Tensor want = kernels::linear(x.to(Device::cpu(), DType::f32), w.to(Device::cpu(), DType::f32));
    REQUIRE(test::relative_error(kernels::linear(x, w), want) <= tol);
  }
  Tensor x = Tensor::zeros({2, 3}, DType::f32, gpu);
  REQUIRE_THROWS_WITH(kernels::linear(x, Tensor::zeros({4, 3})), Contains("matmul: tensors on different devices"));
  REQUIRE_THROWS_WITH(kernels::matmul(x.to(DType::f64), x.to(DType::f64), false, true), Contains("f32 or bf16"));
}

TEST_CASE("gelu_mlp and the GELU epilogues: GPU matches CPU", "[matmul][cuda]") {
  // Hidden widths that are multiples of 8 take cuBLASLt's GELU_AUX(_BIAS) and DGELU epilogues;
  // 13 takes the separate ops.
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::bf16 ? 2e-2 : 2e-3;  // f32: the epilogue's tanh may be an approximation
    for (auto [rows, d, hidden] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 8, 8}, {37, 64, 13}, {300, 96, 384}})
      for (bool bias : {true, false}) {
        INFO(dtype_name(dtype) << " rows " << rows << " d " << d << " hidden " << hidden << " bias " << bias);
        auto draw = [&](const Shape& s, uint64_t seed, double scale) {
          return test::random_normal(s, seed, DType::f32, Device::cpu(), scale).to(dtype).to(DType::f32);
        };
        std::vector<Tensor> in = {draw({rows, d}, 30, 1.0), draw({hidden, d}, 31, 0.2), draw({hidden}, 32, 1.0),
                                  draw({d, hidden}, 33, 0.2), draw({d}, 34, 1.0)};
        std::vector<ag::Variable> vc, vd;
        for (const Tensor& t : in) {
          vc.emplace_back(t, true);
          vd.emplace_back(t.to(gpu, dtype), true);
        }
        auto run = [bias](const std::vector<ag::Variable>& v) {
          return ag::gelu_mlp(v[0], v[1], bias ? v[2] : ag::Variable(), v[3], bias ? v[4] : ag::Variable());
        };
        ag::Variable yc = run(vc), yd = run(vd);
        REQUIRE(yd.dtype() == dtype);
        REQUIRE(test::relative_error(yd.value(), yc.value()) <= tol);
        Tensor g = draw({rows, d}, 35, 1.0);
        yc.backward(g);
        yd.backward(g.to(gpu, dtype));
        for (size_t i = 0; i < in.size(); ++i) {
          if (!bias && (i == 2 || i == 4)) continue;
          INFO("input " << i);
          REQUIRE(test::relative_error(vd[i].grad(), vc[i].grad()) <= tol);
        }
        kernels::LinearGelu lg = kernels::linear_gelu(vd[0].value(), vd[1].value(), bias ? vd[2].value() : Tensor());
        kernels::LinearGelu lc = kernels::linear_gelu(in[0], in[1], bias ? in[2] : Tensor());
        REQUIRE(test::relative_error(lg.pre, lc.pre) <= tol);
        REQUIRE(test::relative_error(lg.out, lc.out) <= tol);
      }
  }
}
