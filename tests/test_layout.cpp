#include "autograd/functions/layout.h"
#include "autograd/functions/reduce.h"
#include "autograd/gradcheck.h"
#include "kernels/layout.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
namespace ag = coil::autograd;
using Catch::Matchers::Contains;

TEST_CASE("transpose, concat, split: values", "[layout]") {
  Tensor x = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor t = kernels::transpose(x, 0, 1);
  REQUIRE(t.shape() == Shape{3, 2});
  REQUIRE(t.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  REQUIRE(kernels::transpose(x, -1, 0).to_vector<float>() == t.to_vector<float>());
  REQUIRE(kernels::transpose(x, 1, 1).to_vector<float>() == x.to_vector<float>());
  Tensor y = Tensor::arange(24, DType::i64).reshape({2, 3, 4});
  Tensor y02 = kernels::transpose(y, 0, 2);  // [4, 3, 2]: y02[k, j, i] = y[i, j, k]
  REQUIRE(y02.shape() == Shape{4, 3, 2});
  std::vector<int64_t> v = y02.to_vector<int64_t>();
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) REQUIRE(v[size_t((k * 3 + j) * 2 + i)] == (i * 3 + j) * 4 + k);

  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  Tensor b = Tensor::from_vector<float>({5, 6}, {2, 1});
  REQUIRE(kernels::concat({a, b}, 1).to_vector<float>() == std::vector<float>{1, 2, 5, 3, 4, 6});
  REQUIRE(kernels::concat({a, a}, 0).shape() == Shape{4, 2});
  std::vector<Tensor> parts = kernels::split(kernels::concat({a, b}, -1), {2, 1}, 1);
  REQUIRE(parts.size() == 2);
  REQUIRE(parts[0].to_vector<float>() == a.to_vector<float>());
  REQUIRE(parts[1].to_vector<float>() == b.to_vector<float>());
  REQUIRE(kernels::split(a, {0, 2}, 0)[0].shape() == Shape{0, 2});
}

TEST_CASE("layout ops: gradcheck", "[layout][gradcheck]") {
  Tensor x = test::random_normal({2, 3, 4}, 1, DType::f64);
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::reshape(v[0], {4, -1}); }, {x});
  for (auto [d0, d1] : std::vector<std::pair<int, int>>{{0, 1}, {0, 2}, {1, 2}, {2, 0}, {-1, -2}}) {
    INFO("transpose " << d0 << ", " << d1);
    test::require_gradcheck([&](const std::vector<ag::Variable>& v) { return ag::transpose(v[0], d0, d1); }, {x});
  }
  Tensor y = test::random_normal({2, 1, 4}, 2, DType::f64), z = test::random_normal({2, 2, 4}, 3, DType::f64);
  test::require_gradcheck(
      [](const std::vector<ag::Variable>& v) {
        return ag::concat({v[0], v[1], v[2]}, 1);
      },
      {x, y, z});
  test::require_gradcheck([](const std::vector<ag::Variable>& v) { return ag::concat({v[0], v[0]}, -1); }, {x});
  // split: weight the pieces differently so each piece's gradient path is checked
  test::require_gradcheck(
      [](const std::vector<ag::Variable>& v) {
        std::vector<ag::Variable> p = ag::split(v[0], {1, 2}, 1);
        return ag::concat({ag::transpose(p[1], 1, 2), ag::transpose(p[0], 1, 2)}, 2);
      },
      {x});
}

TEST_CASE("layout ops: reshape is a view; split pieces without a gradient get zeros", "[layout]") {
  ag::Variable x(Tensor::arange(6, DType::f32).reshape({2, 3}), true);
  ag::Variable r = ag::reshape(x, {3, 2});
  REQUIRE(r.value().same_buffer(x.value()));
  std::vector<ag::Variable> p = ag::split(x, {1, 2}, 1);
  REQUIRE(p.size() == 2);
  ag::sum_all(p[1]).backward();  // p[0] takes no part: its gradient is zero
  REQUIRE(x.grad().to_vector<float>() == std::vector<float>{0, 1, 1, 0, 1, 1});
}

TEST_CASE("layout ops: bad inputs give clear errors", "[layout][errors]") {
  Tensor a = Tensor::zeros({2, 3});
  REQUIRE_THROWS_WITH(kernels::transpose(a, 0, 2), Contains("transpose: dim 2 out of range for f32[2, 3] cpu"));
  REQUIRE_THROWS_WITH(kernels::concat({a, Tensor::zeros({3, 3})}, 1),
                      Contains("concat: input 1 is f32[3, 3] cpu but input 0 is f32[2, 3] cpu"));
  REQUIRE_THROWS_WITH(kernels::concat({a, Tensor::zeros({2, 3}, DType::f64)}, 0), Contains("concat: dtypes differ"));
  REQUIRE_THROWS_WITH(kernels::concat({}, 0), Contains("concat: no tensors"));
  REQUIRE_THROWS_WITH(kernels::split(a, {1, 1}, 1), Contains("split: sizes add up to 2, but dim 1 of f32[2, 3] cpu is 3"));
  REQUIRE_THROWS_WITH(ag::reshape(ag::Variable(a), {4, 2}), Contains("cannot view f32[2, 3]"));
}

TEST_CASE("layout ops: GPU matches CPU at awkward sizes", "[layout][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16, DType::i64}) {
    for (Shape shape : {Shape{1, 1}, Shape{7, 1, 3}, Shape{3, 37, 45}, Shape{2, 33, 5, 40}, Shape{1025, 2049},
                        Shape{2, 3, 5, 7, 11}}) {
      Tensor x = test::random_normal(shape, 21, DType::f32).to(dtype);  // (i64: rounded normals)
      Tensor xd = x.to(gpu);
      int64_t n = int64_t(shape.size());
      for (int64_t d0 = 0; d0 < n; ++d0)
        for (int64_t d1 = d0; d1 < n; ++d1) {
          INFO(dtype_name(dtype) << shape_str(shape) << " transpose " << d0 << ", " << d1);
          REQUIRE(test::bitwise_equal(kernels::transpose(xd, d0, d1), kernels::transpose(x, d0, d1)));
        }
      for (int64_t d = 0; d < n; ++d) {
        INFO(dtype_name(dtype) << shape_str(shape) << " concat/split along " << d);
        Shape other = shape;
        other[size_t(d)] = 3;
        Tensor y = test::random_normal(other, 22, DType::f32).to(dtype);
        Tensor cat = kernels::concat({x, y, x}, d);
        REQUIRE(test::bitwise_equal(kernels::concat({xd, y.to(gpu), xd}, d), cat));
        std::vector<Tensor> parts = kernels::split(cat.to(gpu), {shape[size_t(d)], 3, shape[size_t(d)]}, d);
        REQUIRE(test::bitwise_equal(parts[0], x));
        REQUIRE(test::bitwise_equal(parts[1], y));
        REQUIRE(test::bitwise_equal(parts[2], x));
      }
    }
  }
  REQUIRE_THROWS_WITH(kernels::concat({Tensor::zeros({2}), Tensor::zeros({2}, DType::f32, gpu)}, 0),
                      Contains("concat: tensors on different devices"));
}
