#include <cmath>

#include "kernels/adamw.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using kernels::AdamWSlot;

namespace {

AdamWSlot make_slot(std::vector<float> p, std::vector<float> g, double wd, bool copy, Device dev = Device::cpu()) {
  int64_t n = int64_t(p.size());
  AdamWSlot s;
  s.param = Tensor::from_vector(p, {n}, DType::f32, dev);
  s.grad = Tensor::from_vector(g, {n}, DType::f32, dev);
  s.m = Tensor::zeros({n}, DType::f32, dev);
  s.v = Tensor::zeros({n}, DType::f32, dev);
  if (copy) s.copy = Tensor::zeros({n}, DType::bf16, dev);
  s.weight_decay = wd;
  return s;
}

// One AdamW step by hand, in double.
void reference_step(double& p, double& m, double& v, double g, double lr, double wd, double b1, double b2,
                    double eps, int t) {
  p *= 1 - lr * wd;
  m = b1 * m + (1 - b1) * g;
  v = b2 * v + (1 - b2) * g * g;
  p -= lr / (1 - std::pow(b1, t)) * m / (std::sqrt(v) / std::sqrt(1 - std::pow(b2, t)) + eps);
}

}  // namespace

TEST_CASE("AdamW matches a hand-computed step", "[adamw]") {
  auto plan = kernels::make_multi_tensor_plan({make_slot({1.0f, -2.0f}, {0.5f, 0.1f}, 0.1, true),
                                               make_slot({3.0f}, {-1.0f}, 0.0, false)});
  Tensor lr = Tensor::scalar(0.1);
  kernels::AdamWHyper h{0.9, 0.999, 1e-8};
  // Step 1: the bias-corrected update is g / |g| = sign(g).
  kernels::adamw_step(plan, lr, Tensor(), h, 1);
  std::vector<float> p = plan.slots[0].param.to_vector<float>();
  REQUIRE(p[0] == Approx(1.0 * 0.99 - 0.1).epsilon(1e-6));
  REQUIRE(p[1] == Approx(-2.0 * 0.99 - 0.1).epsilon(1e-6));
  REQUIRE(plan.slots[1].param.to_vector<float>()[0] == Approx(3.1).epsilon(1e-6));  // no decay
  REQUIRE(plan.slots[0].m.to_vector<float>()[0] == Approx(0.05));
  REQUIRE(plan.slots[0].v.to_vector<float>()[0] == Approx(0.00025).epsilon(1e-4));  // 1 - beta2 in fp32
  REQUIRE(test::bitwise_equal(plan.slots[0].copy, plan.slots[0].param.to(DType::bf16)));
  // Step 2, same gradient, with a clip coefficient of 0.5.
  kernels::adamw_step(plan, lr, Tensor::scalar(0.5), h, 2);
  double rp = 1.0, rm = 0, rv = 0;
  reference_step(rp, rm, rv, 0.5, 0.1, 0.1, 0.9, 0.999, 1e-8, 1);
  reference_step(rp, rm, rv, 0.25, 0.1, 0.1, 0.9, 0.999, 1e-8, 2);
  REQUIRE(plan.slots[0].param.to_vector<float>()[0] == Approx(rp).epsilon(1e-5));
  REQUIRE(plan.slots[0].m.to_vector<float>()[0] == Approx(rm).epsilon(1e-5));
  REQUIRE(plan.slots[0].v.to_vector<float>()[0] == Approx(rv).epsilon(1e-4));
}

TEST_CASE("global gradient norm and clip coefficient", "[adamw]") {
  auto plan = kernels::make_multi_tensor_plan({make_slot({0, 0}, {3, 4}, 0, false), make_slot({0}, {12}, 0, false)});
  kernels::GradNorm n = kernels::grad_norm(plan, 6.5);
  REQUIRE(n.norm.item() == Approx(13.0));
  REQUIRE(n.clip.item() == Approx(0.5).epsilon(1e-6));
  REQUIRE(kernels::grad_norm(plan, 100.0).clip.item() == 1.0);
  REQUIRE(kernels::grad_norm(plan, 0.0).clip.item() == 1.0);
  // In two parts, as the sharded optimizer uses them: the sum of squares (f64), then the norm.
  Tensor sumsq = kernels::grad_sumsq(plan);
  REQUIRE(sumsq.dtype() == DType::f64);
  REQUIRE(sumsq.item() == 169.0);
  REQUIRE(kernels::norm_and_clip(sumsq, 6.5).clip.item() == n.clip.item());
  REQUIRE_THROWS_WITH(kernels::norm_and_clip(n.norm, 1.0), Catch::Matchers::Contains("f64 scalar"));
  kernels::scale_grads(plan, n.clip);
  REQUIRE(kernels::grad_norm(plan, 0.0).norm.item() == Approx(6.5).epsilon(1e-6));
  auto bad = kernels::make_multi_tensor_plan({make_slot({0}, {NAN}, 0, false)});
  REQUIRE(std::isnan(kernels::grad_norm(bad, 1.0).clip.item()));
}

TEST_CASE("AdamW kernels reject inconsistent slots", "[adamw]") {
  AdamWSlot s = make_slot({1, 2}, {1, 2}, 0, false);
  s.m = Tensor::zeros({3});
  REQUIRE_THROWS_WITH(kernels::make_multi_tensor_plan({s}), Catch::Matchers::Contains("adamw: parameter 0") &&
                                                               Catch::Matchers::Contains("f32[3]"));
  AdamWSlot t = make_slot({1, 2}, {1, 2}, 0, false);
  t.grad = Tensor();
  REQUIRE_THROWS_WITH(kernels::make_multi_tensor_plan({t}), Catch::Matchers::Contains("has no gradient"));
  auto plan = kernels::make_multi_tensor_plan({make_slot({1, 2}, {1, 2}, 0, false)});
  REQUIRE_THROWS_WITH(kernels::adamw_step(plan, Tensor::scalar(0.1, DType::f64), Tensor(), {}, 1),
                      Catch::Matchers::Contains("learning rate must be an f32 scalar"));
  REQUIRE_THROWS_WITH(kernels::adamw_step(plan, Tensor::scalar(0.1), Tensor(), {}, 0),
                      Catch::Matchers::Contains("counts from 1"));
}

TEST_CASE("AdamW and the gradient norm on the GPU match the CPU reference over several steps", "[cuda][adamw]") {
  const Device gpu = Device::cuda(0);
  const std::vector<int64_t> sizes = {1, 7, 65536 + 3, 200000, 1000, 65536};
  for (DType grad_dtype : {DType::f32, DType::bf16}) {
    std::vector<AdamWSlot> cpu_slots, gpu_slots;
    for (size_t i = 0; i < sizes.size(); ++i) {
      AdamWSlot c;
      c.param = test::random_normal({sizes[i]}, 100 + i);
      c.grad = test::random_normal({sizes[i]}, 200 + i).to(grad_dtype).to(DType::f32);  // representable in bf16
      c.m = Tensor::zeros({sizes[i]});
      c.v = Tensor::zeros({sizes[i]});
      c.copy = i % 2 ? Tensor::zeros({sizes[i]}, DType::bf16) : Tensor();
      c.weight_decay = i % 3 ? 0.1 : 0.0;
      AdamWSlot g{c.param.to(gpu), c.grad.to(gpu, grad_dtype), c.m.to(gpu), c.v.to(gpu),
                  c.copy.defined() ? c.copy.to(gpu) : Tensor(), c.weight_decay};
      cpu_slots.push_back(c);
      gpu_slots.push_back(g);
    }
    auto cplan = kernels::make_multi_tensor_plan(cpu_slots), gplan = kernels::make_multi_tensor_plan(gpu_slots);
    kernels::AdamWHyper h{0.9, 0.95, 1e-8};
    Tensor lr_c = Tensor::scalar(1e-2), lr_g = Tensor::scalar(1e-2, DType::f32, gpu);
    for (int step = 1; step <= 5; ++step) {
      kernels::GradNorm nc = kernels::grad_norm(cplan, 300.0), ng = kernels::grad_norm(gplan, 300.0);
      REQUIRE(kernels::grad_sumsq(gplan).item() == Approx(kernels::grad_sumsq(cplan).item()).epsilon(1e-5));
      REQUIRE(ng.norm.item() == Approx(nc.norm.item()).epsilon(1e-5));
      REQUIRE(ng.clip.item() == Approx(nc.clip.item()).epsilon(1e-5));
      REQUIRE(nc.clip.item() < 1.0);
      kernels::adamw_step(cplan, lr_c, nc.clip, h, step);
      kernels::adamw_step(gplan, lr_g, ng.clip, h, step);
      lr_c.fill_(1e-2 / (step + 1));
      lr_g.fill_(1e-2 / (step + 1));
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      INFO("grad " << dtype_name(grad_dtype) << " slot " << i << " size " << sizes[i]);
      REQUIRE(test::relative_error(gplan.slots[i].param.to(Device::cpu()), cplan.slots[i].param) < 1e-5);
      REQUIRE(test::relative_error(gplan.slots[i].m.to(Device::cpu()), cplan.slots[i].m) < 1e-5);
      REQUIRE(test::relative_error(gplan.slots[i].v.to(Device::cpu()), cplan.slots[i].v) < 1e-5);
      if (cplan.slots[i].copy.defined())
        REQUIRE(test::relative_error(gplan.slots[i].copy.to(Device::cpu(), DType::f32),
                                     cplan.slots[i].param) < 1e-2);
    }
    // Deterministic: the same norm bit for bit on a second evaluation.
    REQUIRE(kernels::grad_norm(gplan, 1.0).norm.item() == kernels::grad_norm(gplan, 1.0).norm.item());
  }
}
