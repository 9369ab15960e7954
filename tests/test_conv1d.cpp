// Depthwise causal conv1d: CPU reference against central differences (f64), CUDA against the
// CPU reference, errors.
#include <cmath>

#include "core/random.h"
#include "kernels/conv1d.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::kernels;

TEST_CASE("conv1d CPU reference matches central differences (f64)") {
  for (int K : {1, 2, 4})
    for (bool silu : {false, true})
      for (bool with_bias : {false, true}) {
        Generator gen(uint64_t(K * 10 + silu * 2 + with_bias));
        Tensor x = randn({2, 7, 3}, gen, DType::f64);  // (batch, length, dim)
        Tensor w = randn({3, K}, gen, DType::f64);
        Tensor b = with_bias ? randn({3}, gen, DType::f64) : Tensor();
        Tensor wo = randn({2, 7, 3}, gen, DType::f64);
        Conv1dGrads g = conv1d_backward(wo, x, w, b, silu);
        CHECK(g.dbias.defined() == with_bias);
        Tensor* ins[] = {&x, &w, &b};
        Tensor gs[] = {g.dx, g.dweight, g.dbias};
        for (int k = 0; k < 3; ++k) {
          if (!ins[k]->defined()) continue;
          std::vector<double> an = gs[k].to_vector<double>();
          double* p = ins[k]->data<double>();
          for (int64_t i = 0; i < ins[k]->numel(); ++i) {
            const double saved = p[i], eps = 1e-6;
            p[i] = saved + eps;
            const double up = test::dot(conv1d_forward(x, w, b, silu), wo);
            p[i] = saved - eps;
            const double down = test::dot(conv1d_forward(x, w, b, silu), wo);
            p[i] = saved;
            const double num = (up - down) / (2 * eps);
            INFO("K " << K << " silu " << silu << " input " << k << " element " << i << ": analytic " << an[size_t(i)]
                      << " numeric " << num);
            CHECK(std::abs(num - an[size_t(i)]) <= 1e-6 + 1e-6 * std::abs(num));
          }
        }
      }
}

TEST_CASE("conv1d rejects a width beyond the limit and a mismatched weight") {
  Tensor x = Tensor::zeros({1, 5, 2});
  CHECK_THROWS_WITH(conv1d_forward(x, Tensor::zeros({2, 9}), Tensor(), false),
                    Catch::Matchers::Contains("outside the supported 1..8"));
  CHECK_THROWS_WITH(conv1d_forward(x, Tensor::zeros({3, 4}), Tensor(), false),
                    Catch::Matchers::Contains("weight must be (dim, width)"));
}

TEST_CASE("conv1d CUDA matches the CPU reference", "[cuda]") {
  struct Case {
    int64_t batch, dim, len;
    int K;
    bool silu, bias;
  };
  const Case cases[] = {{2, 5, 1, 4, true, true},     {1, 3, 7, 4, false, true},  {2, 37, 1000, 4, true, true},
                        {1, 8, 2049, 4, true, false},  {1, 6, 4097, 3, true, true}, {3, 4, 1024, 2, false, false},
                        {1, 4, 1025, 1, true, true},   {2, 3, 100, 8, true, true},
                        {2, 300, 260, 4, true, true}};  // several channel blocks and segments
  for (const Case& c : cases)
    for (DType dt : {DType::f32, DType::bf16}) {
      Generator gen(uint64_t(c.len + c.K));
      Tensor x = randn({c.batch, c.len, c.dim}, gen, DType::f32).to(dt).to(DType::f32);
      Tensor w = randn({c.dim, c.K}, gen, DType::f32, Device::cpu(), 0.5);
      Tensor b = c.bias ? randn({c.dim}, gen, DType::f32) : Tensor();
      Tensor go = randn({c.batch, c.len, c.dim}, gen, DType::f32).to(dt).to(DType::f32);
      Tensor ref = conv1d_forward(x, w, b, c.silu);
      Conv1dGrads gref = conv1d_backward(go, x, w, b, c.silu);
      Tensor xd = x.to(Device::cuda(), dt), wd = w.to(Device::cuda());
      Tensor bd = c.bias ? b.to(Device::cuda()) : Tensor();
      Tensor got = conv1d_forward(xd, wd, bd, c.silu);
      Conv1dGrads g = conv1d_backward(go.to(Device::cuda(), dt), xd, wd, bd, c.silu);
      const double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
      INFO("batch " << c.batch << " dim " << c.dim << " len " << c.len << " K " << c.K << " silu " << c.silu
                    << " dtype " << dtype_name(dt));
      CHECK(test::relative_error(got, ref) < tol);
      CHECK(test::relative_error(g.dx, gref.dx) < tol);
      CHECK(test::relative_error(g.dweight, gref.dweight) < tol);
      if (c.bias) CHECK(test::relative_error(g.dbias, gref.dbias) < tol);
      Conv1dGrads g2 = conv1d_backward(go.to(Device::cuda(), dt), xd, wd, bd, c.silu);
      CHECK(test::bitwise_equal(g.dweight, g2.dweight));
    }
}

#include "autograd/functions/conv1d.h"
#include "autograd/gradcheck.h"

TEST_CASE("conv1d autograd op passes gradcheck (f64, CPU)") {
  Generator gen(3);
  Tensor x = randn({2, 6, 3}, gen, DType::f64), w = randn({3, 4}, gen, DType::f64), b = randn({3}, gen, DType::f64);
  auto f = [](const std::vector<autograd::Variable>& v) { return autograd::conv1d(v[0], v[1], v[2], true); };
  autograd::GradcheckResult r = autograd::gradcheck(f, {x, w, b});
  INFO(r.message);
  CHECK(r.ok);
}
