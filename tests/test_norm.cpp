#include "autograd/engine.h"
#include "autograd/functions/norm.h"
#include "autograd/functions/reduce.h"
#include "autograd/gradcheck.h"
#include "kernels/norm.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::autograd;

TEST_CASE("rms_norm and layer_norm pass gradcheck", "[norm]") {
  Tensor x = test::random_normal({4, 6}, 1, DType::f64);
  Tensor w = test::random_normal({6}, 2, DType::f64);
  Tensor b = test::random_normal({6}, 3, DType::f64);
  test::require_ok(gradcheck([](const std::vector<Variable>& v) { return rms_norm(v[0], v[1]); }, {x, w}));
  test::require_ok(gradcheck([](const std::vector<Variable>& v) { return layer_norm(v[0], v[1], v[2]); }, {x, w, b}));
  test::require_ok(
      gradcheck([](const std::vector<Variable>& v) { return layer_norm(v[0], v[1], Variable()); }, {x, w}));
  Tensor x3 = test::random_normal({2, 3, 5}, 4, DType::f64);
  Tensor w5 = test::random_normal({5}, 5, DType::f64);
  test::require_ok(gradcheck([](const std::vector<Variable>& v) { return rms_norm(v[0], v[1], 1e-3); }, {x3, w5}));
}

// The fused ops have two outputs; each is checked through its own gradcheck.
TEST_CASE("add_rms_norm and add_layer_norm pass gradcheck on both outputs", "[norm]") {
  Tensor x = test::random_normal({3, 8}, 11, DType::f64);
  Tensor r = test::random_normal({3, 8}, 12, DType::f64);
  Tensor w = test::random_normal({8}, 13, DType::f64);
  Tensor b = test::random_normal({8}, 14, DType::f64);
  for (int out : {0, 1}) {
    test::require_ok(gradcheck(
        [out](const std::vector<Variable>& v) {
          NormResidual nr = add_rms_norm(v[0], v[1], v[2]);
          return out == 0 ? nr.normed : nr.residual;
        },
        {x, r, w}));
    test::require_ok(gradcheck(
        [out](const std::vector<Variable>& v) {
          NormResidual nr = add_layer_norm(v[0], v[1], v[2], v[3]);
          return out == 0 ? nr.normed : nr.residual;
        },
        {x, r, w, b}));
    // No residual yet (the first block): residual' = x.
    test::require_ok(gradcheck(
        [out](const std::vector<Variable>& v) {
          NormResidual nr = add_rms_norm(v[0], Variable(), v[1]);
          return out == 0 ? nr.normed : nr.residual;
        },
        {x, w}));
  }
  // Both outputs used at once: the gradients from the two paths add up.
  test::require_ok(gradcheck(
      [](const std::vector<Variable>& v) {
        NormResidual nr = add_layer_norm(v[0], v[1], v[2], v[3]);
        NormResidual nr2 = add_layer_norm(nr.normed, nr.residual, v[2], v[3]);
        return nr2.normed;
      },
      {x, r, w, b}));
}

TEST_CASE("norm values against a hand computation", "[norm]") {
  Tensor x = Tensor::from_vector<float>({1, 2, 3, 4}, {1, 4});
  Tensor w = Tensor::from_vector<float>({1, 1, 2, 1}, {4});
  std::vector<float> y = rms_norm(Variable(x), Variable(w), 0.0).value().to_vector<float>();
  double rms = std::sqrt((1 + 4 + 9 + 16) / 4.0);
  REQUIRE(y[2] == Approx(2 * 3 / rms));
  std::vector<float> z = layer_norm(Variable(x), Variable(w), Variable(), 0.0).value().to_vector<float>();
  double sd = std::sqrt(1.25);
  REQUIRE(z[0] == Approx(-1.5 / sd));
  REQUIRE(z[2] == Approx(2 * 0.5 / sd));
  NormResidual nr = add_rms_norm(Variable(x), Variable(Tensor::ones({1, 4})), Variable(w), 0.0);
  REQUIRE(nr.residual.value().to_vector<float>() == std::vector<float>{2, 3, 4, 5});
  REQUIRE(nr.residual.dtype() == DType::f32);
}

TEST_CASE("norms reject bad shapes and dtypes with clear errors", "[norm]") {
  Variable x(Tensor::zeros({2, 4}));
  REQUIRE_THROWS_WITH(rms_norm(x, Variable(Tensor::ones({5}))),
                      Catch::Matchers::Contains("rms_norm") && Catch::Matchers::Contains("weight must be [4]"));
  REQUIRE_THROWS_WITH(add_rms_norm(x, Variable(Tensor::zeros({2, 3})), Variable(Tensor::ones({4}))),
                      Catch::Matchers::Contains("add_rms_norm"));
  REQUIRE_THROWS_WITH(layer_norm(x, Variable(Tensor::ones({4}, DType::f64)), Variable()),
                      Catch::Matchers::Contains("dtype"));
  REQUIRE_THROWS_WITH(add_rms_norm(x, Variable(Tensor::zeros({2, 4}, DType::f64)), Variable(Tensor::ones({4}))),
                      Catch::Matchers::Contains("residual"));
}

namespace {

struct NormCase {
  bool rms, add, bias;
};

// One case forward and backward on `device`: x, weight, bias and the output gradient in `dt`
// (params in param_dt), the residual and its gradient in f32. Returns outputs and gradients in f32.
std::vector<Tensor> run_norm(const NormCase& c, Device device, DType dt, DType param_dt, int64_t rows, int64_t D) {
  auto make = [&](uint64_t seed, Shape shape, DType t, double sd) {
    // Rounded through the GPU dtype first so that both sides see the same values.
    return test::random_normal(shape, seed, DType::f32, Device::cpu(), sd).to(DType::bf16).to(device, t);
  };
  Tensor x = make(21, {rows, D}, dt, 1.0), res = make(22, {rows, D}, DType::f32, 1.0);
  Tensor w = make(23, {D}, param_dt, 0.5), b = make(24, {D}, param_dt, 1.0);
  Tensor gy = make(25, {rows, D}, dt, 1.0), gr = make(26, {rows, D}, DType::f32, 1.0);
  Variable vx(x, true), vr(res, true), vw(w, true), vb(b, true);
  std::vector<Tensor> out;
  if (!c.add) {
    Variable y = c.rms ? rms_norm(vx, vw) : layer_norm(vx, vw, c.bias ? vb : Variable());
    y.backward(gy);
    out = {y.value()};
  } else {
    NormResidual nr = c.rms ? add_rms_norm(vx, vr, vw) : add_layer_norm(vx, vr, vw, c.bias ? vb : Variable());
    REQUIRE(nr.residual.dtype() == DType::f32);
    run_backward({nr.normed, nr.residual}, {gy, gr}, false);
    out = {nr.normed.value(), nr.residual.value(), vr.grad()};
  }
  REQUIRE(out[0].dtype() == dt);
  out.push_back(vx.grad());
  out.push_back(vw.grad());
  if (c.bias && !c.rms) out.push_back(vb.grad());
  for (Tensor& t : out) t = t.to(Device::cpu(), DType::f32);
  return out;
}

}  // namespace

TEST_CASE("norms on the GPU match the CPU reference, forward and backward", "[cuda][norm]") {
  const std::vector<NormCase> cases = {{true, false, false}, {false, false, true}, {false, false, false},
                                       {true, true, false},  {false, true, true}};
  for (DType dt : {DType::f32, DType::bf16}) {
    for (DType param_dt : {dt, DType::f32}) {
      if (dt == DType::f32 && param_dt != dt) continue;
      const double tol = dt == DType::f32 ? 1e-5 : 2e-2;
      // Warp-per-row kernels for D a multiple of 8 up to 2048 (backward 1024; 2000 rows give each
      // warp several rows and the blocks several partials), the block-per-row kernels beyond.
      for (auto [rows, D] : std::vector<std::pair<int64_t, int64_t>>{
               {1, 1}, {5, 7}, {3, 8}, {33, 768}, {2000, 768}, {7, 1000}, {6, 1536}, {9, 2048}, {3, 9000}, {4100, 64}}) {
        for (const NormCase& c : cases) {
          INFO("dtype " << dtype_name(dt) << " params " << dtype_name(param_dt) << " rows " << rows << " D " << D
                        << " rms " << c.rms << " add " << c.add << " bias " << c.bias);
          std::vector<Tensor> ref = run_norm(c, Device::cpu(), DType::f32, DType::f32, rows, D);
          std::vector<Tensor> got = run_norm(c, Device::cuda(0), dt, param_dt, rows, D);
          REQUIRE(ref.size() == got.size());
          for (size_t i = 0; i < ref.size(); ++i) {
            INFO("output " << i);
            // D == 1 layer norm: x - mean is exactly 0, so outputs are the bias alone
            // D == 1 RMSNorm: y = sign(x) w, so dx is a difference of equal terms (pure rounding):
            // compare it absolutely there.
            if (D == 1 && i > 0)
              REQUIRE(test::max_abs_difference(got[i], ref[i]) < 1e-3);
            else
              REQUIRE(test::relative_error(got[i], ref[i]) < tol * (i == 0 ? 1 : 4));
          }
        }
      }
    }
  }
}

TEST_CASE("norm backward on the GPU is deterministic (weight and bias gradients bitwise equal)", "[cuda][norm]") {
  const Device gpu = Device::cuda(0);
  for (int64_t D : {768, 1000, 9000}) {  // warp-per-row and block-per-row kernels
    INFO("D " << D);
    const int64_t rows = 3000;
    Tensor x = test::random_normal({rows, D}, 31, DType::f32, Device::cpu()).to(gpu, DType::bf16);
    Tensor w = test::random_normal({D}, 32, DType::f32, Device::cpu()).to(gpu);
    Tensor b = test::random_normal({D}, 33, DType::f32, Device::cpu()).to(gpu);
    Tensor gy = test::random_normal({rows, D}, 34, DType::f32, Device::cpu()).to(gpu, DType::bf16);
    kernels::NormForward f = kernels::norm_forward(x, Tensor(), w, b, 1e-5, false, false);
    auto grads = [&] {
      kernels::NormBackward g = kernels::norm_backward(gy, x, f.mean, f.rstd, w, true, Tensor(), DType::bf16, false, false);
      return std::vector<Tensor>{g.dweight.to(Device::cpu()), g.dbias.to(Device::cpu())};
    };
    std::vector<Tensor> first = grads(), second = grads();
    for (size_t i = 0; i < first.size(); ++i) REQUIRE(first[i].to_vector<float>() == second[i].to_vector<float>());
  }
}
