#include "autograd/functions/reduce.h"
#include "autograd/gradcheck.h"
#include "kernels/reduce.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
namespace ag = coil::autograd;
using Catch::Matchers::Contains;

TEST_CASE("sum and mean: values and shapes", "[reduce]") {
  Tensor x = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  REQUIRE(kernels::sum(x, 0).to_vector<float>() == std::vector<float>{5, 7, 9});
  REQUIRE(kernels::sum(x, 0).shape() == Shape{3});
  REQUIRE(kernels::sum(x, 1).to_vector<float>() == std::vector<float>{6, 15});
  REQUIRE(kernels::sum(x, -1, true).shape() == Shape{2, 1});
  REQUIRE(kernels::mean(x, 1).to_vector<float>() == std::vector<float>{2, 5});
  REQUIRE(kernels::mean(x, 0, true).shape() == Shape{1, 3});
  REQUIRE(kernels::sum_all(x).shape() == Shape{});
  REQUIRE(kernels::sum_all(x).item() == 21);
  REQUIRE(kernels::mean_all(x).item() == 3.5);
  REQUIRE(kernels::sum_to_suffix(x, {3}).to_vector<float>() == std::vector<float>{5, 7, 9});
  REQUIRE(kernels::sum_to_suffix(x, {2, 3}).to_vector<float>() == x.to_vector<float>());
  REQUIRE(kernels::sum_to_suffix(x, {1}).to_vector<float>() == std::vector<float>{21});
  REQUIRE(kernels::sum_to_suffix(x, {}).shape() == Shape{});
  REQUIRE(kernels::sum(Tensor::zeros({0, 4}), 0).to_vector<float>() == std::vector<float>{0, 0, 0, 0});
  REQUIRE(kernels::sum_all(Tensor::zeros({0})).item() == 0);
  Tensor three = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2}, DType::f64);
  REQUIRE(kernels::sum(three, 1).to_vector<double>() == std::vector<double>{4, 6, 12, 14});
  REQUIRE(kernels::expand_dim(Tensor::from_vector<float>({1, 2}, {2}), {2, 3}, 1, 2.0).to_vector<float>() ==
          std::vector<float>{2, 2, 2, 4, 4, 4});
}

TEST_CASE("sum and mean: gradcheck", "[reduce][gradcheck]") {
  Tensor x = test::random_normal({3, 4, 5}, 1, DType::f64);
  for (int64_t dim : {0, 1, 2, -1})
    for (bool keepdim : {false, true}) {
      INFO("dim " << dim << " keepdim " << keepdim);
      test::require_gradcheck([&](const std::vector<ag::Variable>& v) { return ag::sum(v[0], dim, keepdim); }, {x});
      test::require_gradcheck([&](const std::vector<ag::Variable>& v) { return ag::mean(v[0], dim, keepdim); }, {x});
    }
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::sum_all(v[0]); }, {x});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::mean_all(v[0]); }, {x});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::sum(v[0], 0); },
                          {test::random_normal({1}, 2, DType::f64)});
}

TEST_CASE("reductions: bad inputs give clear errors", "[reduce][errors]") {
  Tensor x = Tensor::zeros({2, 3});
  REQUIRE_THROWS_WITH(kernels::sum(x, 2), Contains("sum: dim 2 out of range for f32[2, 3] cpu"));
  REQUIRE_THROWS_WITH(kernels::mean(x, -3), Contains("mean: dim -3 out of range"));
  REQUIRE_THROWS_WITH(kernels::sum_all(Tensor::zeros({2}, DType::i64)), Contains("sum_all: expected a floating"));
  REQUIRE_THROWS_WITH(kernels::sum_to_suffix(x, {2}), Contains("sum_to_suffix: [2] is not a suffix of f32[2, 3]"));
  REQUIRE_THROWS_WITH(kernels::mean_all(Tensor::zeros({0})), Contains("mean_all: f32[0] cpu has no elements"));
  REQUIRE_THROWS_WITH(kernels::expand_dim(Tensor::zeros({4}), {2, 3}, 1), Contains("cannot be expanded"));
}

TEST_CASE("reductions: GPU matches CPU at awkward sizes", "[reduce][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16}) {
    double tol = dtype == DType::bf16 ? 1e-2 : 1e-5;
    for (Shape shape : {Shape{1}, Shape{7}, Shape{3, 5, 7}, Shape{4097, 33}, Shape{33, 100003}, Shape{2, 70001, 3},
                        Shape{32768, 768}}) {
      Tensor x = test::random_normal(shape, 11, DType::f32).to(dtype).to(DType::f32);
      Tensor xd = x.to(gpu, dtype);
      auto check = [&](const Tensor& got, const Tensor& want, const std::string& what) {
        REQUIRE(got.dtype() == dtype);
        REQUIRE(got.shape() == want.shape());
        double err = test::relative_error(got.to(Device::cpu(), DType::f32), want);
        INFO(what << " of " << dtype_name(dtype) << shape_str(shape) << ": relative error " << err);
        REQUIRE(err <= tol);
      };
      for (int64_t d = 0; d < int64_t(shape.size()); ++d) {
        check(kernels::sum(xd, d), kernels::sum(x, d), "sum dim " + std::to_string(d));
        check(kernels::mean(xd, d, true), kernels::mean(x, d, true), "mean dim " + std::to_string(d));
        Tensor g = test::random_normal(kernels::sum(x, d).shape(), 12).to(dtype).to(DType::f32);
        check(kernels::expand_dim(g.to(gpu, dtype), shape, d, 0.5), kernels::expand_dim(g, shape, d, 0.5), "expand");
      }
      check(kernels::sum_all(xd), kernels::sum_all(x), "sum_all");
      check(kernels::mean_all(xd), kernels::mean_all(x), "mean_all");
      Shape suffix(shape.begin() + 1, shape.end());
      check(kernels::sum_to_suffix(xd, suffix), kernels::sum_to_suffix(x, suffix), "sum_to_suffix");
      // deterministic: the same input gives the same bits
      REQUIRE(test::bitwise_equal(kernels::sum_to_suffix(xd, suffix), kernels::sum_to_suffix(xd, suffix)));
      REQUIRE(test::bitwise_equal(kernels::sum_all(xd), kernels::sum_all(xd)));
    }
  }
}

TEST_CASE("reductions: autograd on the GPU", "[reduce][cuda]") {
  Tensor x = test::random_normal({5, 300, 7}, 13);
  ag::Variable xc(x, true), xd(x.to(Device::cuda(0)), true);
  ag::sum_all(ag::mean(xc, 1)).backward();
  ag::sum_all(ag::mean(xd, 1)).backward();
  REQUIRE(test::relative_error(xd.grad(), xc.grad()) < 1e-6);
  REQUIRE_THROWS_WITH(kernels::sum(x.to(Device::cuda(0), DType::f64), 0), Contains("f32 or bf16"));
}
