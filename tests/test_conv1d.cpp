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

namespace {

// seq_idx (batch, len) i32: documents whose lengths cycle through a few short and long ones
// (some across the kernels' 128-step segment edges), shifted per row.
Tensor cycling_documents(int64_t batch, int64_t len) {
  const int64_t lengths[] = {1, 3, 130, 5, 60, 2, 200};
  std::vector<int32_t> v;
  for (int64_t b = 0; b < batch; ++b) {
    int32_t doc = 0;
    int64_t i = b, left = lengths[b % 7];
    for (int64_t t = 0; t < len; ++t, --left) {
      if (left == 0) left = lengths[++i % 7], ++doc;
      v.push_back(doc);
    }
  }
  return Tensor::from_vector(v, {batch, len}, DType::i32);
}

}  // namespace

TEST_CASE("conv1d CUDA: packed and single-channel, short and full window instances", "[cuda]") {
  // dim 16 and 264 take two channels per thread (264: several blocks), 10 too (not a multiple
  // of 8), 5 one; widths up to 4 the short window, 8 the full one; 4097 ends in a 1-step
  // segment. One document and no state give the documents instance (one channel per thread,
  // full window): the same sums in the same order, so the same bits.
  for (int64_t dim : {16, 264, 10, 5})
    for (int64_t len : {1, 7, 129, 4097})
      for (int K : {2, 4, 8})
        for (DType dt : {DType::bf16, DType::f32}) {
          INFO("dim " << dim << " len " << len << " K " << K << " dtype " << dtype_name(dt));
          const int64_t batch = 2;
          Generator gen(uint64_t(dim * 31 + len * 7 + K));
          auto rounded = [&](const Shape& sh) { return randn(sh, gen, DType::f32).to(dt).to(DType::f32); };
          Tensor x = rounded({batch, len, dim}), go = rounded({batch, len, dim});
          Tensor w = randn({dim, K}, gen, DType::f32, Device::cpu(), 0.5), b = randn({dim}, gen, DType::f32);
          Tensor ref = conv1d_forward(x, w, b, true);
          Conv1dGrads gref = conv1d_backward(go, x, w, b, true);
          Tensor xd = x.to(Device::cuda(), dt), god = go.to(Device::cuda(), dt), wd = w.to(Device::cuda()),
                 bd = b.to(Device::cuda());
          Tensor got = conv1d_forward(xd, wd, bd, true);
          Conv1dGrads g = conv1d_backward(god, xd, wd, bd, true);
          const double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
          CHECK(test::relative_error(got, ref) < tol);
          CHECK(test::relative_error(g.dx, gref.dx) < tol);
          CHECK(test::relative_error(g.dweight, gref.dweight) < tol);
          CHECK(test::relative_error(g.dbias, gref.dbias) < tol);
          // Twice: the same bits.
          Conv1dGrads g2 = conv1d_backward(god, xd, wd, bd, true);
          CHECK(test::bitwise_equal(conv1d_forward(xd, wd, bd, true), got));
          CHECK(test::bitwise_equal(g2.dx, g.dx));
          CHECK(test::bitwise_equal(g2.dweight, g.dweight));
          CHECK(test::bitwise_equal(g2.dbias, g.dbias));
          // The documents instance with one document: the same bits.
          Conv1dOptions one;
          one.seq_idx = Tensor::zeros({batch, len}, DType::i32, Device::cuda());
          Conv1dGrads g1 = conv1d_backward(god, xd, wd, bd, true, one);
          CHECK(test::bitwise_equal(conv1d_forward(xd, wd, bd, true, one), got));
          CHECK(test::bitwise_equal(g1.dx, g.dx));
          CHECK(test::bitwise_equal(g1.dweight, g.dweight));
          CHECK(test::bitwise_equal(g1.dbias, g.dbias));
          // Documents and a carried state against the CPU reference.
          Conv1dOptions o, od;
          o.seq_idx = cycling_documents(batch, len);
          o.initial_state = rounded({batch, K - 1, dim});
          od.seq_idx = o.seq_idx.to(Device::cuda());
          od.initial_state = o.initial_state.to(Device::cuda(), dt);
          Tensor fin_ref, fin;
          Tensor sref = conv1d_forward(x, w, b, true, o, &fin_ref);
          Conv1dGrads sgref = conv1d_backward(go, x, w, b, true, o);
          Tensor sgot = conv1d_forward(xd, wd, bd, true, od, &fin);
          Conv1dGrads sg = conv1d_backward(god, xd, wd, bd, true, od);
          CHECK(test::relative_error(sgot, sref) < tol);
          CHECK(test::max_abs_difference(fin, fin_ref) == 0.0);
          CHECK(test::relative_error(sg.dx, sgref.dx) < tol);
          CHECK(test::relative_error(sg.dweight, sgref.dweight) < tol);
          CHECK(test::relative_error(sg.dbias, sgref.dbias) < tol);
          CHECK(test::relative_error(sg.dinitial_state, sgref.dinitial_state) < tol);
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
