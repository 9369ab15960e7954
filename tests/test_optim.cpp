#include <cmath>

#include "optim/adamw.h"
#include "optim/clip.h"
#include "optim/schedule.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::optim;

TEST_CASE("schedules at key steps", "[optim]") {
  Schedule s{ScheduleKind::cosine, 1e-3, 1e-4, 10, 110};
  validate(s);
  REQUIRE(learning_rate(s, 0) == Approx(1e-4));  // (0 + 1) / 10 of lr
  REQUIRE(learning_rate(s, 4) == Approx(5e-4));
  REQUIRE(learning_rate(s, 9) == Approx(1e-3));  // warmup ends at the peak
  REQUIRE(learning_rate(s, 10) == Approx(1e-3));
  REQUIRE(learning_rate(s, 60) == Approx(5.5e-4));  // half way: the mean of lr and min_lr
  REQUIRE(learning_rate(s, 110) == Approx(1e-4));
  REQUIRE(learning_rate(s, 500) == Approx(1e-4));
  REQUIRE(learning_rate(s, 35) > learning_rate(s, 36));
  Schedule lin{ScheduleKind::linear, 1e-3, 0.0, 0, 100};
  REQUIRE(learning_rate(lin, 0) == Approx(1e-3));
  REQUIRE(learning_rate(lin, 25) == Approx(7.5e-4));
  REQUIRE(learning_rate(lin, 100) == Approx(0.0).margin(1e-15));
  Schedule c{ScheduleKind::constant, 3e-4, 0.0, 0, 0};
  REQUIRE(learning_rate(c, 0) == 3e-4);
  REQUIRE(learning_rate(c, 1000000) == 3e-4);
  Schedule wc{ScheduleKind::constant, 3e-4, 0.0, 4, 0};
  REQUIRE(learning_rate(wc, 1) == Approx(1.5e-4));
  REQUIRE(learning_rate(wc, 4) == 3e-4);
  REQUIRE(parse_schedule_kind("linear") == ScheduleKind::linear);
  REQUIRE_THROWS_WITH(parse_schedule_kind("step"), Catch::Matchers::Contains("unknown kind 'step'"));
  REQUIRE_THROWS_WITH(validate(Schedule{ScheduleKind::cosine, 1e-3, 1e-2, 0, 10}), Catch::Matchers::Contains("min_lr"));
  REQUIRE_THROWS_WITH(validate(Schedule{ScheduleKind::cosine, 1e-3, 0, 20, 10}),
                      Catch::Matchers::Contains("total_steps (10)"));
}

TEST_CASE("parameter groups by name", "[optim]") {
  for (const char* name : {"backbone.layers.0.mixer.A_log", "backbone.layers.0.mixer.D", "backbone.layers.3.norm.weight",
                           "backbone.norm_f.weight", "backbone.layers.0.mixer.conv1d.bias", "mlp.fc1.bias",
                           "h.0.ln_1.weight"})
    REQUIRE(default_no_weight_decay(name));
  for (const char* name : {"backbone.layers.0.mixer.in_proj.weight", "lm_head.weight", "backbone.embedding.weight",
                           "backbone.layers.0.mixer.dt_proj.weight", "backbone.layers.0.mixer.conv1d.weight"})
    REQUIRE_FALSE(default_no_weight_decay(name));
  Variable w(Tensor::ones({2, 2}), true), b(Tensor::ones({2}), true);
  auto groups = groups_by_name({{"fc.weight", w}, {"fc.bias", b}}, 0.1);
  REQUIRE(groups.size() == 2);
  REQUIRE(groups[0].names == std::vector<std::string>{"fc.weight"});
  REQUIRE(groups[0].weight_decay == 0.1);
  REQUIRE(groups[1].names == std::vector<std::string>{"fc.bias"});
  REQUIRE(groups[1].weight_decay == 0.0);
}

TEST_CASE("AdamW class: decay by group, state, clipping, zero_grad", "[optim]") {
  Variable w(Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2}), true), b(Tensor::from_vector<float>({1, -1}, {2}), true);
  AdamW opt(groups_by_name({{"fc.weight", w}, {"fc.bias", b}}, 0.5), {0.1, 0.9, 0.999, 1e-8});
  REQUIRE(w.grad().defined());  // bound to the optimizer's buffer
  // Zero gradients: only decoupled weight decay moves the decay group.
  opt.step();
  REQUIRE(w.value().to_vector<float>()[3] == Approx(4 * 0.95));
  REQUIRE(b.value().to_vector<float>() == std::vector<float>{1, -1});
  REQUIRE(opt.step_count() == 1);
  // Gradients written into the bound buffers are used by the next step.
  Tensor(w.grad()).copy_(Tensor::from_vector<float>({3, 0, 0, 4}, {2, 2}));
  Tensor(b.grad()).copy_(Tensor::from_vector<float>({0, 12}, {2}));
  Tensor norm = opt.clip_grad_norm(6.5);
  REQUIRE(norm.item() == Approx(13.0));
  opt.set_lr(0.01);
  opt.step();
  // m = (1 - beta1) * clip * g for the first non-zero gradient
  REQUIRE(opt.exp_avg(1).to_vector<float>()[1] == Approx(0.1 * 0.5 * 12).epsilon(1e-5));
  REQUIRE(opt.exp_avg_sq(0).to_vector<float>()[0] == Approx(0.001 * 1.5 * 1.5).epsilon(1e-4));
  opt.zero_grad();
  REQUIRE(w.grad().to_vector<float>() == std::vector<float>{0, 0, 0, 0});
  // State round trip.
  auto state = opt.state_tensors();
  REQUIRE(state.size() == 4);
  REQUIRE(state[0].first == "exp_avg/fc.weight");
  REQUIRE(state[3].first == "exp_avg_sq/fc.bias");
  std::vector<std::pair<std::string, Tensor>> saved;
  for (auto& [k, t] : state) saved.emplace_back(k, t.clone());
  Tensor(opt.exp_avg(0)).zero_();
  opt.load_state_tensors(saved);
  REQUIRE(test::bitwise_equal(opt.exp_avg(0), saved[0].second));
  saved.pop_back();
  REQUIRE_THROWS_WITH(opt.load_state_tensors(saved), Catch::Matchers::Contains("no 'exp_avg_sq/fc.bias'"));
}

TEST_CASE("AdamW::zero_grad zeros every gradient, in the flat buffer or bound elsewhere", "[optim]") {
  for (bool own_buffer : {false, true}) {
    INFO("b bound to its own buffer: " << own_buffer);
    Variable w(Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2}), true), b(Tensor::from_vector<float>({1, -1}, {2}), true);
    Tensor own = Tensor::zeros({2});
    if (own_buffer) b.set_grad(own);
    AdamW opt(groups_by_name({{"fc.weight", w}, {"fc.bias", b}}, 0.5), {0.1, 0.9, 0.999, 1e-8});
    REQUIRE(b.grad().same_buffer(w.grad()) == !own_buffer);  // one flat buffer, or b's own
    Tensor(w.grad()).copy_(Tensor::from_vector<float>({3, 5, 7, 4}, {2, 2}));
    Tensor(b.grad()).copy_(Tensor::from_vector<float>({2, 12}, {2}));
    opt.zero_grad();
    REQUIRE(w.grad().to_vector<float>() == std::vector<float>{0, 0, 0, 0});
    REQUIRE(b.grad().to_vector<float>() == std::vector<float>{0, 0});
    REQUIRE(b.grad().same_buffer(own) == own_buffer);  // still bound where it was
  }
}

TEST_CASE("AdamW class minimizes a quadratic; compute copies follow the masters", "[optim]") {
  Variable p(Tensor::from_vector<float>({5, -3, 2}, {3}), true);
  AdamW opt({ParamGroup{"all", {"p"}, {p}, 0.0}}, {0.1, 0.9, 0.999, 1e-8});
  opt.enable_compute_copies();
  for (int i = 0; i < 300; ++i) {
    Tensor(p.grad()).copy_(p.value());  // d/dp of |p|^2 / 2
    opt.step();
  }
  for (float x : p.value().to_vector<float>()) REQUIRE(std::abs(x) < 0.1);
  REQUIRE(test::bitwise_equal(opt.compute_copy(0), p.value().to(DType::bf16)));
}

TEST_CASE("AdamW and clipping reject bad input", "[optim]") {
  Variable p(Tensor::ones({2}), true), d(Tensor::ones({2}, DType::f64), true), n(Tensor::ones({2}), false);
  REQUIRE_THROWS_WITH(AdamW({ParamGroup{"g", {"a", "b"}, {p, p}, 0.0}}), Catch::Matchers::Contains("same as 'a'"));
  REQUIRE_THROWS_WITH(AdamW({ParamGroup{"g", {"x"}, {d}, 0.0}}), Catch::Matchers::Contains("fp32 master"));
  REQUIRE_THROWS_WITH(AdamW({ParamGroup{"g", {"x"}, {n}, 0.0}}), Catch::Matchers::Contains("requires a gradient"));
  REQUIRE_THROWS_WITH(AdamW({ParamGroup{"g", {}, {p}, 0.0}}, {-1.0}), Catch::Matchers::Contains("lr -1"));
  REQUIRE_THROWS_WITH(clip_grad_norm({p}, 0.0), Catch::Matchers::Contains("max_norm must be > 0"));
}

TEST_CASE("clip_grad_norm scales gradients to the maximum norm", "[optim]") {
  Variable a(Tensor::zeros({2}), true), b(Tensor::zeros({1}), true), c(Tensor::zeros({1}), true);
  a.set_grad(Tensor::from_vector<float>({3, 4}, {2}));
  b.set_grad(Tensor::from_vector<float>({12}, {1}));
  REQUIRE(global_grad_norm({a, b, c}).item() == Approx(13.0));
  Tensor norm = clip_grad_norm({a, b, c}, 1.3);
  REQUIRE(norm.item() == Approx(13.0));
  REQUIRE(a.grad().to_vector<float>()[1] == Approx(0.4).epsilon(1e-5));
  REQUIRE(global_grad_norm({a, b}).item() == Approx(1.3).epsilon(1e-5));
  clip_grad_norm({a, b}, 100.0);  // below the maximum: unchanged
  REQUIRE(global_grad_norm({a, b}).item() == Approx(1.3).epsilon(1e-5));
}

TEST_CASE("AdamW class on the GPU matches the CPU", "[cuda][optim]") {
  const Device gpu = Device::cuda(0);
  Tensor w0 = test::random_normal({300, 70}, 1), b0 = test::random_normal({70}, 2);
  Variable wc(w0.clone(), true), bc(b0.clone(), true), wg(w0.to(gpu), true), bg(b0.to(gpu), true);
  AdamW oc(groups_by_name({{"l.weight", wc}, {"l.bias", bc}}, 0.1), {1e-2, 0.9, 0.95, 1e-8});
  AdamW og(groups_by_name({{"l.weight", wg}, {"l.bias", bg}}, 0.1), {1e-2, 0.9, 0.95, 1e-8});
  og.enable_compute_copies();
  for (int step = 0; step < 4; ++step) {
    Tensor gw = test::random_normal({300, 70}, 10 + step), gb = test::random_normal({70}, 20 + step);
    Tensor(wc.grad()).copy_(gw);
    Tensor(bc.grad()).copy_(gb);
    Tensor(wg.grad()).copy_(gw);
    Tensor(bg.grad()).copy_(gb);
    REQUIRE(og.clip_grad_norm(50.0).item() == Approx(oc.clip_grad_norm(50.0).item()).epsilon(1e-5));
    oc.step();
    og.step();
  }
  REQUIRE(test::relative_error(wg.value().to(Device::cpu()), wc.value()) < 1e-5);
  REQUIRE(test::relative_error(bg.value().to(Device::cpu()), bc.value()) < 1e-5);
  REQUIRE(test::bitwise_equal(og.compute_copy(0), wg.value().to(DType::bf16)));
}
