// Selective scan: the CPU reference against central differences (f64), the CUDA kernels
// against the CPU reference (outputs and every gradient), determinism, and errors.
#include <cmath>
#include <functional>
#include <initializer_list>
#include <string>

#include "kernels/selective_scan.h"
#include "core/random.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::kernels;

namespace {

struct Config {
  int64_t batch = 2, dim = 3, len = 9, state = 3;
  bool z = true, bias = true, softplus = true, D = true, h0 = true, grad_final = true;
};

// Random inputs in Mamba's ranges: dt around 0.05..0.7, A negative (S4D-real-like).
ScanArgs make_args(const Config& c, uint64_t seed, DType dtype = DType::f64) {
  ScanArgs a;
  Generator gen(seed);
  a.u = randn({c.batch, c.len, c.dim}, gen, dtype);
  a.delta = c.softplus ? uniform({c.batch, c.len, c.dim}, -3.0, 0.5, gen, dtype)
                       : uniform({c.batch, c.len, c.dim}, 0.02, 0.4, gen, dtype);
  a.A = uniform({c.dim, c.state}, -4.0, -0.2, gen, dtype);
  a.B = randn({c.batch, c.len, c.state}, gen, dtype);
  a.C = randn({c.batch, c.len, c.state}, gen, dtype);
  if (c.D) a.D = randn({c.dim}, gen, dtype);
  if (c.z) a.z = randn({c.batch, c.len, c.dim}, gen, dtype);
  if (c.bias) a.delta_bias = uniform({c.dim}, -1.0, 0.5, gen, dtype);
  if (c.h0) a.initial_state = randn({c.batch, c.dim, c.state}, gen, dtype, Device::cpu(), 0.5);
  a.delta_softplus = c.softplus;
  return a;
}

std::vector<Tensor*> inputs_of(ScanArgs& a) {
  return {&a.u, &a.delta, &a.A, &a.B, &a.C, &a.D, &a.z, &a.delta_bias, &a.initial_state};
}
std::vector<Tensor> grads_of(const ScanGrads& g) {
  return {g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.ddelta_bias, g.dinitial_state};
}
const char* kNames[] = {"u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"};

}  // namespace

TEST_CASE("selective scan CPU reference matches central differences (f64)") {
  for (int variant = 0; variant < 3; ++variant) {
    Config c;
    if (variant == 1) {
      c.z = c.bias = c.h0 = c.grad_final = false;
      c.softplus = false;
    }
    if (variant == 2) {
      c.D = false;
      c.len = 1;
      c.state = 5;
    }
    INFO("variant " << variant);
    ScanArgs a = make_args(c, 11 + variant);
    Generator gen(99);
    Tensor w_out = randn(a.u.shape(), gen, DType::f64);
    Tensor w_fin = c.grad_final ? randn({c.batch, c.dim, c.state}, gen, DType::f64) : Tensor();
    auto loss = [&](const ScanArgs& args) {
      ScanResult r = selective_scan_forward(args);
      return test::dot(r.out, w_out) + (w_fin.defined() ? test::dot(r.final_state, w_fin) : 0.0);
    };
    ScanGrads g = selective_scan_backward(a, selective_scan_forward(a), w_out, w_fin);
    std::vector<Tensor*> xs = inputs_of(a);
    std::vector<Tensor> gs = grads_of(g);
    for (size_t k = 0; k < xs.size(); ++k) {
      if (!xs[k]->defined()) {
        CHECK_FALSE(gs[k].defined());
        continue;
      }
      REQUIRE(gs[k].defined());
      std::vector<double> analytic = gs[k].to_vector<double>();
      double* p = xs[k]->data<double>();
      for (int64_t i = 0; i < xs[k]->numel(); ++i) {
        const double saved = p[i], eps = 1e-6;
        p[i] = saved + eps;
        const double up = loss(a);
        p[i] = saved - eps;
        const double down = loss(a);
        p[i] = saved;
        const double numeric = (up - down) / (2 * eps);
        INFO(kNames[k] << "[" << i << "]: analytic " << analytic[size_t(i)] << ", numeric " << numeric);
        CHECK(std::abs(numeric - analytic[size_t(i)]) <= 1e-6 + 1e-5 * std::abs(numeric));
      }
    }
  }
}

TEST_CASE("selective scan CPU forward: zero length keeps the initial state; NaN propagates") {
  Config c;
  c.len = 0;
  ScanArgs a = make_args(c, 5);
  ScanResult r = selective_scan_forward(a);
  CHECK(test::max_abs_difference(r.final_state, a.initial_state) == 0.0);
  c.len = 4;
  a = make_args(c, 6);
  a.u.data<double>()[1] = NAN;
  r = selective_scan_forward(a);
  CHECK(std::isnan(r.out.to_vector<double>()[1]));
}

TEST_CASE("selective scan rejects bad shapes with a clear error") {
  Config c;
  ScanArgs a = make_args(c, 7);
  a.B = Tensor::zeros({c.batch, c.len, c.state + 1}, DType::f64);
  CHECK_THROWS_WITH(selective_scan_forward(a), Catch::Matchers::Contains("B must have shape"));
}

namespace {

// Runs forward and backward on the GPU in `dtype` and on the CPU in f32 from the same
// (dtype-rounded) values; checks outputs and all gradients.
void compare_with_cpu(const Config& c, DType dtype, uint64_t seed) {
  ScanArgs host = make_args(c, seed, DType::f32);
  ScanArgs dev = host;
  // Activations in dtype on the GPU; the CPU sees the same rounded values.
  for (Tensor* t : {&host.u, &host.delta, &host.B, &host.C, &host.z})
    if (t->defined()) *t = t->to(dtype).to(DType::f32);
  for (int k = 0; k < 9; ++k) {
    Tensor* h = inputs_of(host)[size_t(k)];
    Tensor* d = inputs_of(dev)[size_t(k)];
    if (!h->defined()) continue;
    const bool activation = k == 0 || k == 1 || k == 3 || k == 4 || k == 6;
    *d = h->to(Device::cuda(), activation ? dtype : DType::f32);
  }
  Generator gen(seed + 1000);
  Tensor gout = randn(host.u.shape(), gen, DType::f32).to(dtype).to(DType::f32);
  Tensor gfin = c.grad_final ? randn({c.batch, c.dim, c.state}, gen, DType::f32) : Tensor();

  ScanResult ref = selective_scan_forward(host);
  ScanGrads gref = selective_scan_backward(host, ref, gout, gfin);
  ScanResult got = selective_scan_forward(dev);
  ScanGrads ggot = selective_scan_backward(dev, got, gout.to(Device::cuda(), dtype),
                                           gfin.defined() ? gfin.to(Device::cuda()) : Tensor(), false);
  const double tol = dtype == DType::bf16 ? 2e-2 : 5e-4;
  INFO("batch " << c.batch << " dim " << c.dim << " len " << c.len << " state " << c.state << " dtype "
                << dtype_name(dtype) << " z " << c.z << " bias " << c.bias << " h0 " << c.h0);
  CHECK(got.out.dtype() == dtype);
  CHECK(test::relative_error(got.out, ref.out) < tol);
  CHECK(test::relative_error(got.final_state, ref.final_state) < tol);
  std::vector<Tensor> a = grads_of(ggot), b = grads_of(gref);
  for (size_t k = 0; k < a.size(); ++k) {
    INFO("gradient of " << kNames[k]);
    REQUIRE(a[k].defined() == b[k].defined());
    if (!a[k].defined()) continue;
    const double err = test::relative_error(a[k], b[k]);
    INFO("relative error " << err);
    CHECK(err < tol);
  }
}

}  // namespace

namespace {

struct Case {
  int64_t batch, dim, len, state;
  bool z, bias, h0;
};

void compare_cases(std::initializer_list<Case> cases) {
  for (const Case& k : cases)
    for (DType dtype : {DType::f32, DType::bf16}) {
      Config c;
      c.batch = k.batch;
      c.dim = k.dim;
      c.len = k.len;
      c.state = k.state;
      c.z = k.z;
      c.bias = k.bias;
      c.h0 = k.h0;
      c.grad_final = k.h0;
      compare_with_cpu(c, dtype, uint64_t(k.len * 131 + k.state));
    }
}

// Runs f under each CUDA backward main kernel (ScanBackward; the pair kernel runs where
// d_state is 9..16, the current one elsewhere), then restores the setting.
void for_each_backward_kernel(const std::function<void()>& f) {
  const ScanBackward before = scan_backward_kind();
  for (ScanBackward k : {ScanBackward::one_channel, ScanBackward::channel_pairs}) {
    INFO("backward kernel " << (k == ScanBackward::one_channel ? "one" : "pairs"));
    set_scan_backward_kind(k);
    f();
  }
  set_scan_backward_kind(before);
}

}  // namespace

TEST_CASE("selective scan CUDA matches the CPU reference at awkward sizes", "[cuda]") {
  for_each_backward_kernel([] {
    compare_cases({
        {2, 37, 1, 16, true, true, true},    {1, 5, 7, 4, true, false, false},
        {2, 37, 128, 16, true, true, true},  {1, 70, 1000, 16, false, true, true},
        {1, 9, 2048, 64, true, true, false}, {1, 33, 4097, 16, true, true, true},
        {2, 17, 1000, 64, false, false, true}, {1, 40, 300, 4, true, true, true},
        {1, 12, 257, 24, true, true, true},
        // An odd and an even number of chunks (the backward's kept rerun states), d_state 8, 32.
        {1, 24, 130, 8, true, true, true}, {2, 16, 96, 32, true, false, true},
        // dim a multiple of 8: the 16-byte channel packs (a partial last tile in the first).
        {2, 104, 300, 16, true, true, true}, {1, 128, 129, 64, false, true, true},
        // d_state 12: the pair kernel with padded states.
        {1, 19, 200, 12, true, true, true},
    });
    // Without softplus (delta used as given).
    Config c;
    c.batch = 2;
    c.dim = 20;
    c.len = 333;
    c.state = 16;
    c.softplus = false;
    c.bias = false;  // keeps dt positive (a negative dt would make the state grow without bound)
    compare_with_cpu(c, DType::f32, 3);
  });
}

// Time runs in parallel segments whenever the (channel tiles x batch) blocks leave the GPU
// partly idle: every case below but the last is cut into segments (up to one per 64-step
// checkpoint interval, so segment boundaries fall inside and at the ends of the short cases
// too); the last has enough blocks to fill an H200 alone (no segments).
TEST_CASE("selective scan CUDA over time segments: lengths 1 to 65537, with and without initial state", "[cuda]") {
  for_each_backward_kernel([] {
    for (int64_t len : {1, 7, 64, 65, 4097, 65537})
      for (bool h0 : {true, false}) compare_cases({{1, 24, len, 16, true, true, h0}});
    compare_cases({{4, 1024, 2000, 16, true, true, true}, {30, 1280, 100, 16, true, true, true}});
    // Other segment counts: fewer (a quarter wave) and more (4 and 16 waves: up to a segment per
    // checkpoint interval), forward and backward cut differently.
    const ScanWaves before = scan_waves();
    for (ScanWaves w : {ScanWaves{0.25f, 4.f}, ScanWaves{16.f, 0.25f}}) {
      INFO("waves forward " << w.forward << ", backward " << w.backward);
      set_scan_waves(w);
      compare_cases({{1, 24, 4097, 16, true, true, true}, {2, 40, 1000, 16, true, true, false}});
    }
    set_scan_waves(before);
  });
}

TEST_CASE("the scan's segment waves take numbers in (0, 64] only") {
  const ScanWaves before = scan_waves();
  set_scan_waves({2.f, 0.5f});
  CHECK(scan_waves().forward == 2.f);
  CHECK(scan_waves().backward == 0.5f);
  CHECK_THROWS_WITH(set_scan_waves({0.f, 1.f}),
                    Catch::Matchers::Contains("waves must be in (0, 64], got forward 0, backward 1"));
  CHECK_THROWS_WITH(set_scan_waves({1.f, 65.f}), Catch::Matchers::Contains("got forward 1, backward 65"));
  set_scan_waves(before);
}

TEST_CASE("selective scan CUDA deterministic backward gives identical bits", "[cuda]") {
  for_each_backward_kernel([] {
    Config c;
    c.batch = 2;
    c.dim = 104;
    c.len = 700;
    c.state = 16;
    ScanArgs dev = make_args(c, 21, DType::f32);
    for (Tensor* t : {&dev.u, &dev.delta, &dev.B, &dev.C, &dev.z}) *t = t->to(Device::cuda(), DType::bf16);
    for (Tensor* t : {&dev.A, &dev.D, &dev.delta_bias, &dev.initial_state}) *t = t->to(Device::cuda());
    Generator gen(5);
    Tensor gout = randn(dev.u.shape(), gen, DType::bf16, Device::cuda());
    ScanResult r = selective_scan_forward(dev);
    ScanGrads g1 = selective_scan_backward(dev, r, gout, Tensor(), true);
    ScanGrads g2 = selective_scan_backward(dev, r, gout, Tensor(), true);
    ScanGrads g3 = selective_scan_backward(dev, r, gout, Tensor(), false);
    std::vector<Tensor> a = grads_of(g1), b = grads_of(g2), n = grads_of(g3);
    for (size_t k = 0; k < a.size(); ++k) {
      INFO("gradient of " << kNames[k]);
      CHECK(test::bitwise_equal(a[k], b[k]));
      CHECK(test::relative_error(n[k], a[k]) < 1e-2);
    }
  });
}

TEST_CASE("selective scan CUDA: NaN and inf propagate (across time segments), d_state beyond the limit is an error",
          "[cuda]") {
  Config c;
  c.batch = 1;
  c.dim = 4;
  c.len = 300;  // several segments: what a segment carries reaches the next ones
  c.state = 8;
  ScanArgs dev = make_args(c, 8, DType::f32);
  for (Tensor* t : inputs_of(dev))
    if (t->defined()) *t = t->to(Device::cuda());
  Tensor u = dev.u.to(Device::cpu());  // (1, 300, 4): element (t, d) at t * 4 + d
  u.data<float>()[50 * 4 + 2] = NAN;
  dev.u = u.to(Device::cuda());
  Tensor delta = dev.delta.to(Device::cpu());
  delta.data<float>()[70 * 4 + 1] = INFINITY;
  dev.delta = delta.to(Device::cuda());
  std::vector<float> out = selective_scan_forward(dev).out.to_vector<float>();
  CHECK(std::isnan(out[50 * 4 + 2]));
  CHECK(std::isnan(out[299 * 4 + 2]));  // carried by the state
  CHECK_FALSE(std::isfinite(out[70 * 4 + 1]));
  CHECK_FALSE(std::isfinite(out[299 * 4 + 1]));
  CHECK(std::isfinite(out[299 * 4 + 0]));
  CHECK(std::isfinite(out[49 * 4 + 2]));
  CHECK(std::isfinite(out[69 * 4 + 1]));

  c.state = kScanMaxStateCuda + 1;
  ScanArgs big = make_args(c, 9, DType::f32);
  for (Tensor* t : inputs_of(big))
    if (t->defined()) *t = t->to(Device::cuda());
  CHECK_THROWS_WITH(selective_scan_forward(big), Catch::Matchers::Contains("exceeds the CUDA kernel's limit of 64"));
}

#include "autograd/functions/selective_scan.h"
#include "autograd/gradcheck.h"

TEST_CASE("selective scan autograd op passes gradcheck (f64, CPU)") {
  Config c;
  ScanArgs a = make_args(c, 31);
  for (int which = 0; which < 2; ++which) {
    INFO((which == 0 ? "out" : "final_state"));
    auto f = [&](const std::vector<autograd::Variable>& v) {
      autograd::ScanInputs in;
      in.u = v[0];
      in.delta = v[1];
      in.A = v[2];
      in.B = v[3];
      in.C = v[4];
      in.D = v[5];
      in.z = v[6];
      in.delta_bias = v[7];
      in.initial_state = v[8];
      in.delta_softplus = true;
      autograd::ScanOutputs o = autograd::selective_scan(in);
      return which == 0 ? o.out : o.final_state;
    };
    autograd::GradcheckResult r =
        autograd::gradcheck(f, {a.u, a.delta, a.A, a.B, a.C, a.D, a.z, a.delta_bias, a.initial_state});
    INFO(r.message);
    CHECK(r.ok);
  }
}
