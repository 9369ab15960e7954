#include <cmath>

#include "autograd/functions/softmax.h"
#include "autograd/gradcheck.h"
#include "kernels/softmax.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::autograd;

TEST_CASE("softmax and log_softmax pass gradcheck", "[softmax]") {
  for (Shape shape : {Shape{3, 5}, Shape{2, 3, 4}, Shape{4, 1}}) {
    Tensor x = test::random_normal(shape, 1, DType::f64);
    auto r1 = gradcheck([](const std::vector<Variable>& v) { return softmax(v[0]); }, {x});
    INFO(r1.message);
    REQUIRE(r1.ok);
    auto r2 = gradcheck([](const std::vector<Variable>& v) { return log_softmax(v[0]); }, {x});
    INFO(r2.message);
    REQUIRE(r2.ok);
  }
}

TEST_CASE("softmax values, stability with large logits", "[softmax]") {
  Tensor x = Tensor::from_vector<float>({1, 2, 3, 1000, 1000, -1000}, {2, 3});
  std::vector<float> y = kernels::softmax_forward(x).to_vector<float>();
  double z = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
  REQUIRE(y[0] == Approx(std::exp(1.0) / z));
  REQUIRE(y[2] == Approx(std::exp(3.0) / z));
  REQUIRE(y[3] == Approx(0.5));
  REQUIRE(y[5] == Approx(0.0).margin(1e-30));
  std::vector<float> ly = kernels::log_softmax_forward(x).to_vector<float>();
  REQUIRE(ly[3] == Approx(-std::log(2.0)));
  REQUIRE(ly[5] == Approx(-2000 - std::log(2.0)));
}

TEST_CASE("softmax rejects integer and scalar inputs", "[softmax]") {
  REQUIRE_THROWS_WITH(kernels::softmax_forward(Tensor::zeros({2, 3}, DType::i64)),
                      Catch::Matchers::Contains("softmax") && Catch::Matchers::Contains("i64"));
  REQUIRE_THROWS_WITH(kernels::softmax_forward(Tensor::scalar(1.0)),
                      Catch::Matchers::Contains("at least one dimension"));
  Tensor y = Tensor::zeros({2, 3});
  REQUIRE_THROWS_WITH(kernels::softmax_backward(Tensor::zeros({3, 2}), y), Catch::Matchers::Contains("softmax_backward"));
}

TEST_CASE("softmax on the GPU matches the CPU reference at awkward sizes", "[cuda][softmax]") {
  const Device gpu = Device::cuda(0);
  for (DType dt : {DType::f32, DType::bf16}) {
    // f32: the GPU uses the exp2 unit (about 2 ulp, growing with |x|; inputs here span +-12),
    // seen at 6.6e-5 over 50k-column rows on an H100.
    const double tol = dt == DType::f32 ? 2e-4 : 2e-2;
    // Rows past the shared-memory cache (f32 50k, all 70k) re-read their tail.
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
             {5, 1}, {3, 7}, {9, 1000}, {3, 50280}, {2, 50277}, {2, 70000}, {2, 70001}}) {
      for (bool log : {false, true}) {
        INFO("dtype " << dtype_name(dt) << " rows " << rows << " cols " << cols << " log " << log);
        Tensor x = test::random_normal({rows, cols}, 7, DType::f32, Device::cpu(), 3.0).to(dt);
        Tensor g = test::random_normal({rows, cols}, 8, DType::f32).to(dt);
        Tensor xr = x.to(DType::f32), gr = g.to(DType::f32);  // the rounded inputs, in f32
        Tensor y_cpu = log ? kernels::log_softmax_forward(xr) : kernels::softmax_forward(xr);
        Tensor y_gpu = log ? kernels::log_softmax_forward(x.to(gpu)) : kernels::softmax_forward(x.to(gpu));
        REQUIRE(y_gpu.dtype() == dt);
        REQUIRE(test::relative_error(y_gpu.to(Device::cpu(), DType::f32), y_cpu) < tol);
        Tensor yb = y_cpu.to(dt);  // the backward from the same y on both sides
        Tensor dx_cpu = log ? kernels::log_softmax_backward(gr, yb.to(DType::f32))
                            : kernels::softmax_backward(gr, yb.to(DType::f32));
        Tensor dx_gpu = log ? kernels::log_softmax_backward(g.to(gpu), yb.to(gpu))
                            : kernels::softmax_backward(g.to(gpu), yb.to(gpu));
        REQUIRE(test::relative_error(dx_gpu.to(Device::cpu(), DType::f32), dx_cpu) < tol);
      }
    }
  }
}
