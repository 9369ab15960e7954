#include "core/allocator.h"
#include "core/random.h"
#include "core/tensor.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;

TEST_CASE("tensor creation, shape and dtype", "[tensor]") {
  Tensor t = Tensor::zeros({2, 3}, DType::f32);
  REQUIRE(t.defined());
  REQUIRE(t.dim() == 2);
  REQUIRE(t.numel() == 6);
  REQUIRE(t.size(-1) == 3);
  REQUIRE(t.nbytes() == 24);
  REQUIRE(t.device() == Device::cpu());
  for (float v : t.to_vector<float>()) REQUIRE(v == 0.0f);

  Tensor f = Tensor::full({4}, 2.5, DType::f64);
  for (double v : f.to_vector<double>()) REQUIRE(v == 2.5);
  REQUIRE(Tensor::ones({3}, DType::i32).to_vector<int32_t>() == std::vector<int32_t>{1, 1, 1});
  REQUIRE(Tensor::arange(4).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3});
  REQUIRE(Tensor::scalar(3.0).dim() == 0);
  REQUIRE(Tensor::scalar(3.0).item() == 3.0);
  REQUIRE_FALSE(Tensor().defined());
}

TEST_CASE("reshape and narrow0 are views of one buffer", "[tensor]") {
  Tensor t = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor r = t.reshape({3, -1});
  REQUIRE(r.shape() == Shape{3, 2});
  REQUIRE(r.same_buffer(t));
  r.data<float>()[0] = 42;
  REQUIRE(t.to_vector<float>()[0] == 42);

  Tensor row = t.narrow0(1, 2);
  REQUIRE(row.shape() == Shape{1, 3});
  REQUIRE(row.to_vector<float>() == std::vector<float>{3, 4, 5});
  row.fill_(7);
  REQUIRE(t.to_vector<float>() == std::vector<float>{42, 1, 2, 7, 7, 7});

  Tensor v = t.view_bytes(4, {2}, DType::f32);
  REQUIRE(v.to_vector<float>() == std::vector<float>{1, 2});

  REQUIRE_THROWS_WITH(t.reshape({4, 2}), Catch::Matchers::Contains("cannot view f32[2, 3]"));
  REQUIRE_THROWS_WITH(t.narrow0(1, 3), Catch::Matchers::Contains("out of range"));
  REQUIRE_THROWS_WITH(t.view_bytes(20, {2}, DType::f32), Catch::Matchers::Contains("exceed"));
}

TEST_CASE("copies between dtypes keep values", "[tensor]") {
  Tensor t = Tensor::from_vector<float>({1.5f, -2.25f, 3.0f, 1e-3f}, {4});
  REQUIRE(t.to(DType::f64).to_vector<double>() == std::vector<double>{1.5, -2.25, 3.0, double(1e-3f)});
  REQUIRE(t.to(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{1, -2, 3, 0});
  // bf16 keeps 8 significant bits: these values are exact, 1e-3 rounds.
  std::vector<float> b = t.to(DType::bf16).to_vector<float>();
  REQUIRE(b[0] == 1.5f);
  REQUIRE(b[1] == -2.25f);
  REQUIRE(b[3] == Approx(1e-3).epsilon(1e-2));
  Tensor c = t.clone();
  REQUIRE_FALSE(c.same_buffer(t));
  c.zero_();
  REQUIRE(t.to_vector<float>()[0] == 1.5f);
}

TEST_CASE("bf16 rounding is to nearest even", "[tensor]") {
  REQUIRE(float_to_bf16(1.0f).bits == 0x3f80);
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
  REQUIRE(float_to_bf16(1.00390625f).bits == 0x3f80);
  REQUIRE(float_to_bf16(1.01171875f).bits == 0x3f82);  // halfway above odd: rounds up
  REQUIRE(std::isnan(bf16_to_float(float_to_bf16(NAN))));
  REQUIRE(std::isinf(bf16_to_float(float_to_bf16(INFINITY))));
}

TEST_CASE("errors name the op, shapes, dtypes and devices", "[tensor]") {
  Tensor a = Tensor::zeros({2, 3});
  Tensor b = Tensor::zeros({3, 2}, DType::f64);
  REQUIRE_THROWS_WITH(check_same_shape("add", a, b),
                      Catch::Matchers::Contains("add: shapes differ: f32[2, 3] cpu and f64[3, 2] cpu"));
  REQUIRE_THROWS_WITH(check_same_dtype("mul", a, b), Catch::Matchers::Contains("mul: dtypes differ"));
  REQUIRE_THROWS_WITH(check_dtype("exp", Tensor::zeros({1}, DType::i32), {DType::f32, DType::bf16}),
                      Catch::Matchers::Contains("supported: f32, bf16"));
  REQUIRE_THROWS_WITH(a.data<double>(), Catch::Matchers::Contains("requested f64 from f32[2, 3]"));
  REQUIRE_THROWS_WITH(Tensor().raw(), Catch::Matchers::Contains("undefined tensor"));
  REQUIRE_THROWS_WITH(Tensor::from_vector<float>({1, 2}, {3}), Catch::Matchers::Contains("2 values for shape [3]"));
  REQUIRE_THROWS_WITH(parse_device("gpu"), Catch::Matchers::Contains("unknown device 'gpu'"));
  REQUIRE(parse_device("cuda:1") == Device::cuda(1));
}

TEST_CASE("Philox streams are deterministic and splittable", "[random]") {
  // Known-answer test from the Random123 distribution: Philox4x32-10, counter 0, key 0.
  auto r = philox4x32({0, 0, 0, 0}, 0);
  REQUIRE(r[0] == 0x6627e8d5u);
  REQUIRE(r[1] == 0xe169c58du);
  REQUIRE(r[2] == 0xbc57ac4cu);
  REQUIRE(r[3] == 0x9b00dbd8u);

  Generator g1(1234), g2(1234);
  Tensor a = randn({1000}, g1), b = randn({1000}, g2);
  REQUIRE(test::bitwise_equal(a, b));
  REQUIRE(g1.offset == g2.offset);
  // Drawing in two pieces gives the same stream as drawing at once (offsets stay aligned).
  Generator whole(7), parts(7);
  Tensor w = uniform({8}, 0, 1, whole);
  Tensor p1 = uniform({4}, 0, 1, parts), p2 = uniform({4}, 0, 1, parts);
  std::vector<float> wv = w.to_vector<float>(), v1 = p1.to_vector<float>(), v2 = p2.to_vector<float>();
  v1.insert(v1.end(), v2.begin(), v2.end());
  REQUIRE(wv == v1);

  std::vector<double> x = randn({20000}, g1, DType::f64).to_vector<double>();
  double mean = 0, var = 0;
  for (double v : x) mean += v;
  mean /= double(x.size());
  for (double v : x) var += (v - mean) * (v - mean);
  var /= double(x.size());
  REQUIRE(std::abs(mean) < 0.03);
  REQUIRE(std::abs(var - 1.0) < 0.05);
  for (double v : uniform({1000}, -2, 3, g1, DType::f64).to_vector<double>()) {
    REQUIRE(v >= -2);
    REQUIRE(v < 3);
  }
}

TEST_CASE("CPU-only build or no GPU: CUDA tensors raise a clear error", "[tensor]") {
  if (cuda_available()) return;
  REQUIRE_THROWS_WITH(Tensor::zeros({2}, DType::f32, Device::cuda(0)), Catch::Matchers::Contains("cuda"));
}

TEST_CASE("tensors move between CPU and GPU with dtype conversion", "[cuda]") {
  Tensor host = test::random_normal({3, 1001}, 5);
  Tensor dev = host.to(Device::cuda(0));
  REQUIRE(dev.device() == Device::cuda(0));
  REQUIRE(test::bitwise_equal(dev.to(Device::cpu()), host));
  Tensor dev_bf16 = host.to(Device::cuda(0), DType::bf16);
  REQUIRE(test::bitwise_equal(dev_bf16.to(Device::cpu()), host.to(DType::bf16)));
  REQUIRE(test::bitwise_equal(dev_bf16.to(DType::f32).to(Device::cpu()), host.to(DType::bf16).to(DType::f32)));
  Tensor filled = Tensor::full({5, 7}, 1.25, DType::bf16, Device::cuda(0));
  for (float v : filled.to_vector<float>()) REQUIRE(v == 1.25f);
  Tensor z = Tensor::zeros({17}, DType::i64, Device::cuda(0));
  for (int64_t v : z.to_vector<int64_t>()) REQUIRE(v == 0);
  REQUIRE(dev.narrow0(1, 2).to_vector<float>() == host.narrow0(1, 2).to_vector<float>());
  REQUIRE(Tensor::scalar(2.0, DType::f32, Device::cuda(0)).item() == 2.0);
}

TEST_CASE("the caching allocator reuses blocks and keeps statistics", "[cuda]") {
  Device gpu = Device::cuda(0);
  empty_cache(gpu);
  MemoryStats before = memory_stats(gpu);
  {
    Tensor a = Tensor::empty({1 << 20}, DType::f32, gpu);  // 4 MiB
    MemoryStats during = memory_stats(gpu);
    REQUIRE(during.in_use >= before.in_use + (4u << 20));
    REQUIRE(during.peak_in_use >= during.in_use);
    REQUIRE(during.reserved >= during.in_use);
  }
  MemoryStats after_free = memory_stats(gpu);
  REQUIRE(after_free.in_use == before.in_use);
  REQUIRE(after_free.reserved >= before.reserved + (4u << 20));  // cached, not returned
  size_t mallocs = after_free.num_cuda_mallocs;
  { Tensor b = Tensor::empty({1 << 20}, DType::f32, gpu); }
  REQUIRE(memory_stats(gpu).num_cuda_mallocs == mallocs);  // served from the cache
  empty_cache(gpu);
  REQUIRE(memory_stats(gpu).reserved == memory_stats(gpu).in_use);
}

TEST_CASE("an allocation larger than the GPU fails with a clear message", "[cuda]") {
  Device gpu = Device::cuda(0);
  REQUIRE_THROWS_WITH(Tensor::empty({int64_t(1) << 42}, DType::f32, gpu),
                      Catch::Matchers::Contains("CUDA out of memory") &&
                          Catch::Matchers::Contains("smaller micro-batch"));
  // The allocator still works afterwards.
  Tensor ok = Tensor::ones({10}, DType::f32, gpu);
  REQUIRE(ok.to_vector<float>()[9] == 1.0f);
}
