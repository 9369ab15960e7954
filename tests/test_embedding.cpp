#include "autograd/functions/embedding.h"
#include "autograd/gradcheck.h"
#include "kernels/embedding.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
namespace ag = coil::autograd;
using Catch::Matchers::Contains;

TEST_CASE("embedding: gather and scatter-add", "[embedding]") {
  Tensor w = Tensor::from_vector<float>({0, 1, 10, 11, 20, 21}, {3, 2});
  for (DType id_type : {DType::i32, DType::i64}) {
    Tensor ids = Tensor::from_vector<int64_t>({2, 0, 2, 1}, {2, 2}, id_type);
    Tensor y = kernels::embedding(w, ids);
    REQUIRE(y.shape() == Shape{2, 2, 2});
    REQUIRE(y.to_vector<float>() == std::vector<float>{20, 21, 0, 1, 20, 21, 10, 11});
    Tensor g = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2});
    Tensor dw = kernels::embedding_backward(g, ids, 3);
    REQUIRE(dw.to_vector<float>() == std::vector<float>{3, 4, 7, 8, 6, 8});  // row 2 gets positions 0 and 2
  }
  REQUIRE(kernels::embedding(w, Tensor::zeros({0}, DType::i64)).shape() == Shape{0, 2});
  REQUIRE(kernels::embedding(w, Tensor::scalar(1, DType::i32)).to_vector<float>() == std::vector<float>{10, 11});
}

TEST_CASE("embedding: gradcheck with repeated ids", "[embedding][gradcheck]") {
  Tensor w = test::random_normal({5, 3}, 1, DType::f64);
  for (DType id_type : {DType::i32, DType::i64}) {
    Tensor ids = Tensor::from_vector<int64_t>({4, 1, 4, 0, 1, 4}, {3, 2}, id_type);
    ag::GradcheckResult r =
        ag::gradcheck([](const std::vector<ag::Variable>& v) { return ag::embedding(v[0], v[1].value()); }, {w, ids});
    INFO(r.message);
    REQUIRE(r.ok);
  }
}

TEST_CASE("embedding: bad inputs give clear errors", "[embedding][errors]") {
  Tensor w = Tensor::zeros({4, 3});
  Tensor ids = Tensor::from_vector<int64_t>({0, 1, 2, 3, 7, 1}, {2, 3});
  REQUIRE_THROWS_WITH(kernels::embedding(w, ids),
                      Contains("embedding: id 7 at position [1, 1] of ids i64[2, 3] cpu is outside the vocabulary [0, 4)"));
  REQUIRE_THROWS_WITH(kernels::embedding(w, Tensor::from_vector<int32_t>({-1}, {1})),
                      Contains("id -1 at position [0]"));
  REQUIRE_THROWS_WITH(ag::embedding(ag::Variable(w, true), ids), Contains("id 7"));
  REQUIRE_THROWS_WITH(kernels::embedding(w, Tensor::zeros({2}, DType::f32)),
                      Contains("embedding: unsupported dtype in f32[2] cpu (supported: i32, i64)"));
  REQUIRE_THROWS_WITH(kernels::embedding(Tensor::zeros({4}), Tensor::zeros({2}, DType::i64)),
                      Contains("embedding: weight must be [vocab, dim], got f32[4] cpu"));
  REQUIRE_THROWS_WITH(kernels::embedding_backward(Tensor::zeros({3, 2}), Tensor::zeros({2}, DType::i64), 4),
                      Contains("grad f32[3, 2] cpu must be the ids' shape [2] plus one dim"));
  REQUIRE_THROWS_WITH(kernels::embedding_backward(Tensor::zeros({1, 2}), Tensor::full({1}, 9, DType::i64), 4),
                      Contains("embedding backward: id 9 at position [0]"));
}

TEST_CASE("embedding: GPU matches CPU, deterministic backward", "[embedding][cuda]") {
  Device gpu = Device::cuda(0);
  for (DType dtype : {DType::f32, DType::bf16})
    for (DType id_type : {DType::i32, DType::i64})
      for (auto [n, V, D] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{
               {1, 1, 1}, {7, 3, 5}, {1000, 37, 129}, {16 * 2048, 50277, 768}, {4099, 50, 1}}) {
        INFO(dtype_name(dtype) << " ids " << dtype_name(id_type) << " n " << n << " V " << V << " D " << D);
        Generator gen(n + V);
        std::vector<int64_t> host(static_cast<size_t>(n));
        for (auto& id : host) id = int64_t(gen.next_below(uint64_t(std::min<int64_t>(V, 40))));  // many repeats
        if (n > 1) host[1] = V - 1;
        Tensor ids = Tensor::from_vector<int64_t>(host, {n}, id_type);
        Tensor w = test::random_normal({V, D}, 1).to(dtype).to(DType::f32);
        Tensor g = test::random_normal({n, D}, 2).to(dtype).to(DType::f32);
        Tensor y = kernels::embedding(w.to(gpu, dtype), ids.to(gpu));
        REQUIRE(test::bitwise_equal(y.to(Device::cpu(), DType::f32), kernels::embedding(w, ids)));
        Tensor dw = kernels::embedding_backward(g.to(gpu, dtype), ids.to(gpu), V);
        Tensor want = kernels::embedding_backward(g, ids, V);
        REQUIRE(test::relative_error(dw, want) <= (dtype == DType::bf16 ? 1e-2 : 1e-5));
        REQUIRE(test::bitwise_equal(dw, kernels::embedding_backward(g.to(gpu, dtype), ids.to(gpu), V)));
      }
  kernels::check_embedding_errors();  // nothing pending
}

TEST_CASE("embedding: an out-of-range id on the GPU is reported", "[embedding][cuda][errors]") {
  Device gpu = Device::cuda(0);
  Tensor w = Tensor::zeros({4, 3}, DType::f32, gpu);
  Tensor ids = Tensor::from_vector<int64_t>({0, 1, 9, 3}, {2, 2}, DType::i64, gpu);
  Tensor y = kernels::embedding(w, ids);  // asynchronous: no error yet
  REQUIRE_THROWS_WITH(kernels::check_embedding_errors(), Contains("id 9 at flat position 2") && Contains("[0, 4)"));
  kernels::check_embedding_errors();  // reported once, then cleared
  kernels::embedding_backward(Tensor::zeros({2, 2, 3}, DType::f32, gpu), ids, 4);
  coil::cuda::synchronize();
  REQUIRE_THROWS_WITH(kernels::embedding(w, Tensor::zeros({1}, DType::i64, gpu)), Contains("id 9"));
  REQUIRE_THROWS_WITH(kernels::embedding(w, Tensor::zeros({1}, DType::i64)), Contains("embedding: tensors on different devices"));
}
