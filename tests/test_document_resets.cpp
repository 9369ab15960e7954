// Packed documents and carried state (docs/MODELS.md): the document bounds, the selective scan,
// the conv1d and attention with seq_idx (CPU reference against central differences and
// against each document run alone; CUDA against the CPU reference), whole models with packed
// documents against each document alone, and carried state across windows against one pass
// over the concatenation.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "autograd/functions/attention.h"
#include "autograd/functions/conv1d.h"
#include "autograd/functions/selective_scan.h"
#include "kernels/attention.h"
#include "kernels/conv1d.h"
#include "kernels/documents.h"
#include "kernels/layout.h"
#include "kernels/selective_scan.h"
#include "tests/catch.h"
#include "tests/scan_inputs.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::kernels;
using Catch::Matchers::Contains;
using test::random_normal;
using test::relative_error;

namespace {

// seq_idx (batch, sum of lengths) i32: row b holds documents of lengths[b] back to back,
// indexed from first_index (any values work: only changes of the index mark a start).
Tensor seq_idx_of(const std::vector<std::vector<int64_t>>& lengths, int32_t first_index = 0) {
  int64_t L = 0;
  for (int64_t n : lengths[0]) L += n;
  std::vector<int32_t> v;
  for (const auto& row : lengths) {
    int32_t doc = first_index;
    for (int64_t n : row) {
      for (int64_t i = 0; i < n; ++i) v.push_back(doc);
      ++doc;
    }
  }
  REQUIRE(int64_t(v.size()) == int64_t(lengths.size()) * L);
  return Tensor::from_vector(v, {int64_t(lengths.size()), L}, DType::i32);
}

// Positions [begin, end) along dim 1 of a (batch, length, ...) tensor, as a new tensor.
Tensor time_slice(const Tensor& x, int64_t begin, int64_t end) {
  return split(x, {begin, end - begin, x.size(1) - end}, 1)[1];
}

}  // namespace

TEST_CASE("document starts and positions follow the changes of seq_idx", "[documents]") {
  // Row 0: documents of 2, 3, 1; row 1: one document; row 2: indices that go back down
  // (0, 1, 0): each change starts a document, values do not matter.
  std::vector<int32_t> v = {0, 0, 1, 1, 1, 2, 7, 7, 7, 7, 7, 7, 0, 1, 0, 0, 5, 5};
  Tensor s = Tensor::from_vector(v, {3, 6}, DType::i32);
  CHECK(document_starts(s).to_vector<int32_t>() ==
        std::vector<int32_t>{0, 0, 2, 2, 2, 5, 0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 4, 4});
  CHECK(document_positions(s).to_vector<int64_t>() ==
        std::vector<int64_t>{0, 1, 0, 1, 2, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0, 1, 0, 1});
  CHECK_THROWS_WITH(document_starts(s.to(DType::i64)), Contains("seq_idx") && Contains("must be i32"));
}

// ---- selective scan ----

namespace {

ScanArgs scan_slice(const ScanArgs& a, int64_t begin, int64_t end) {
  ScanArgs s = a;
  for (Tensor* t : {&s.u, &s.delta, &s.B, &s.C, &s.z}) *t = time_slice(*t, begin, end);
  s.seq_idx = Tensor();
  return s;
}

}  // namespace

TEST_CASE("selective scan with seq_idx passes gradcheck (f64, CPU), initial and final state included",
          "[documents]") {
  ScanArgs a = test::random_scan_args(2, 9, 3, 3, 41);
  // Row 0: documents of 1, 4, 4 (a start at t = 1); row 1: 6 then 3.
  const Tensor seq_idx = seq_idx_of({{1, 4, 4}, {6, 3}});
  for (int which = 0; which < 2; ++which) {
    INFO((which == 0 ? "out" : "final_state"));
    auto f = [&](const std::vector<autograd::Variable>& v) {
      using In = autograd::ScanInputs;
      autograd::Variable In::*fields[] = {&In::u, &In::delta,      &In::A, &In::B, &In::C, &In::D, &In::z,
                                          &In::delta_bias, &In::initial_state};
      In in;
      for (size_t i = 0; i < 9; ++i) in.*fields[i] = v[i];
      in.seq_idx = seq_idx;
      in.delta_softplus = true;
      autograd::ScanOutputs o = autograd::selective_scan(in);
      return which == 0 ? o.out : o.final_state;
    };
    test::require_gradcheck(f, {a.u, a.delta, a.A, a.B, a.C, a.D, a.z, a.delta_bias, a.initial_state});
  }
}

TEST_CASE("selective scan: documents packed with resets give exactly each document's scan alone",
          "[documents]") {
  // One row: documents [0, 5) (from the initial state), [5, 6), [6, 13) (each from zero).
  ScanArgs a = test::random_scan_args(1, 13, 4, 5, 42);
  a.seq_idx = seq_idx_of({{5, 1, 7}});
  ScanResult packed = selective_scan_forward(a);
  Generator gen(7);
  Tensor gout = randn(a.u.shape(), gen, DType::f64), gfin = randn(packed.final_state.shape(), gen, DType::f64);
  ScanGrads gp = selective_scan_backward(a, packed, gout, gfin);
  const int64_t bounds[] = {0, 5, 6, 13};
  Tensor dA = Tensor::zeros(a.A.shape(), DType::f64);
  std::vector<double> dAsum(size_t(a.A.numel()), 0.0);
  for (int doc = 0; doc < 3; ++doc) {
    INFO("document " << doc);
    const int64_t b0 = bounds[doc], b1 = bounds[doc + 1];
    ScanArgs alone = scan_slice(a, b0, b1);
    if (doc > 0) alone.initial_state = Tensor();
    ScanResult r = selective_scan_forward(alone);
    Tensor g_alone = time_slice(gout, b0, b1);
    ScanGrads g = selective_scan_backward(alone, r, g_alone, doc == 2 ? gfin : Tensor());
    CHECK(test::max_abs_difference(time_slice(packed.out, b0, b1), r.out) == 0.0);
    CHECK(test::max_abs_difference(time_slice(gp.du, b0, b1), g.du) < 1e-13);
    CHECK(test::max_abs_difference(time_slice(gp.ddelta, b0, b1), g.ddelta) < 1e-13);
    CHECK(test::max_abs_difference(time_slice(gp.dB, b0, b1), g.dB) < 1e-13);
    CHECK(test::max_abs_difference(time_slice(gp.dC, b0, b1), g.dC) < 1e-13);
    if (doc == 0) CHECK(test::max_abs_difference(gp.dinitial_state, g.dinitial_state) < 1e-13);
    if (doc == 2) CHECK(test::max_abs_difference(packed.final_state, r.final_state) == 0.0);
    std::vector<double> d = g.dA.to_vector<double>();
    for (size_t i = 0; i < d.size(); ++i) dAsum[i] += d[i];
  }
  CHECK(test::max_abs_difference(gp.dA, Tensor::from_vector(dAsum, a.A.shape(), DType::f64)) < 1e-12);
}

TEST_CASE("selective scan rejects a bad seq_idx", "[documents]") {
  ScanArgs a = test::random_scan_args(2, 5, 3, 2, 43);
  a.seq_idx = Tensor::zeros({2, 5}, DType::i64);
  CHECK_THROWS_WITH(selective_scan_forward(a), Contains("selective_scan_forward") && Contains("must be i32"));
  a.seq_idx = Tensor::zeros({2, 4}, DType::i32);
  CHECK_THROWS_WITH(selective_scan_forward(a), Contains("seq_idx must be (batch, length) = (2, 5)"));
}

// ---- conv1d ----

TEST_CASE("conv1d with seq_idx and an initial state passes gradcheck (f64, CPU)", "[documents]") {
  for (int K : {1, 2, 4}) {
    INFO("width " << K);
    Generator gen(uint64_t(50 + K));
    Tensor x = randn({2, 8, 3}, gen, DType::f64), w = randn({3, K}, gen, DType::f64), b = randn({3}, gen, DType::f64);
    Tensor h0 = randn({2, K - 1, 3}, gen, DType::f64);
    // Row 0: documents of 2, 1, 5 (the initial state reaches t = 0, 1 only); row 1: one.
    const Tensor seq_idx = seq_idx_of({{2, 1, 5}, {8}});
    auto f = [&](const std::vector<autograd::Variable>& v) {
      return autograd::conv1d(v[0], v[1], v[2], true, seq_idx, v[3]);
    };
    test::require_gradcheck(f, {x, w, b, h0});
  }
}

TEST_CASE("conv1d: documents packed with resets give each document alone; the final state continues it",
          "[documents]") {
  const int64_t K = 4;
  Generator gen(60);
  Tensor x = randn({1, 12, 5}, gen, DType::f64), w = randn({5, K}, gen, DType::f64), b = randn({5}, gen, DType::f64);
  Tensor h0 = randn({1, K - 1, 5}, gen, DType::f64);
  Conv1dOptions packed;
  packed.seq_idx = seq_idx_of({{4, 2, 6}});
  packed.initial_state = h0;
  Tensor fin;
  Tensor out = conv1d_forward(x, w, b, true, packed, &fin);
  const int64_t bounds[] = {0, 4, 6, 12};
  for (int doc = 0; doc < 3; ++doc) {
    INFO("document " << doc);
    Conv1dOptions alone;
    if (doc == 0) alone.initial_state = h0;
    Tensor fin_alone;
    Tensor r = conv1d_forward(time_slice(x, bounds[doc], bounds[doc + 1]), w, b, true, alone, &fin_alone);
    CHECK(test::max_abs_difference(time_slice(out, bounds[doc], bounds[doc + 1]), r) == 0.0);
    // The last document is 6 long: its final state is its last K-1 inputs.
    if (doc == 2) CHECK(test::max_abs_difference(fin, fin_alone) == 0.0);
  }
  CHECK(test::max_abs_difference(fin, time_slice(x, 12 - (K - 1), 12)) == 0.0);
  // A last document shorter than K-1: the final state holds zeros before its start.
  packed.seq_idx = seq_idx_of({{10, 2}});
  conv1d_forward(x, w, b, true, packed, &fin);
  std::vector<double> f = fin.to_vector<double>(), xs = x.to_vector<double>();
  for (int64_t d = 0; d < 5; ++d) {
    CHECK(f[size_t(d)] == 0.0);
    CHECK(f[size_t(5 + d)] == xs[size_t(10 * 5 + d)]);
    CHECK(f[size_t(10 + d)] == xs[size_t(11 * 5 + d)]);
  }
  // Two windows with the state carried give the conv of their concatenation.
  Conv1dOptions second;
  conv1d_forward(time_slice(x, 0, 7), w, b, true, {}, &second.initial_state);
  Tensor whole = conv1d_forward(x, w, b, true);
  CHECK(test::max_abs_difference(conv1d_forward(time_slice(x, 7, 12), w, b, true, second), time_slice(whole, 7, 12)) ==
        0.0);
}

TEST_CASE("conv1d rejects a bad initial state", "[documents]") {
  Conv1dOptions o;
  o.initial_state = Tensor::zeros({1, 2, 3});
  CHECK_THROWS_WITH(conv1d_forward(Tensor::zeros({1, 5, 3}), Tensor::zeros({3, 4}), Tensor(), false, o),
                    Contains("initial_state must be (batch, width - 1, dim) = [1, 3, 3]"));
}

// ---- attention ----

TEST_CASE("attention with seq_idx passes gradcheck (f64, CPU), with and without a window", "[documents]") {
  const Tensor seq_idx = seq_idx_of({{3, 1, 3}, {7}});
  for (int64_t window : {0, 2}) {
    INFO("window " << window);
    kernels::AttentionOptions o;
    o.window = window;
    o.seq_idx = seq_idx;
    Tensor qkv = random_normal({2, 7, 3, 2, 4}, 70 + uint64_t(window), DType::f64);
    test::require_gradcheck([&](const std::vector<autograd::Variable>& v) { return autograd::attention(v[0], o); },
                            {qkv});
  }
}

TEST_CASE("attention: documents packed with resets give each document alone", "[documents]") {
  Tensor q = random_normal({1, 11, 2, 4}, 80, DType::f64), k = random_normal({1, 11, 2, 4}, 81, DType::f64),
         v = random_normal({1, 11, 2, 4}, 82, DType::f64), g = random_normal({1, 11, 2, 4}, 83, DType::f64);
  kernels::AttentionOptions o;
  o.seq_idx = seq_idx_of({{4, 1, 6}});
  AttentionOutput packed = attention_forward(q, k, v, o);
  AttentionGrads gp = attention_backward(g, q, k, v, packed.out, packed.lse, o);
  const int64_t bounds[] = {0, 4, 5, 11};
  for (int doc = 0; doc < 3; ++doc) {
    INFO("document " << doc);
    auto cut = [&](const Tensor& t) { return time_slice(t, bounds[doc], bounds[doc + 1]); };
    AttentionOutput r = attention_forward(cut(q), cut(k), cut(v));
    AttentionGrads gr = attention_backward(cut(g), cut(q), cut(k), cut(v), r.out, r.lse);
    CHECK(test::max_abs_difference(cut(packed.out), r.out) < 1e-14);
    CHECK(test::max_abs_difference(cut(gp.dq), gr.dq) < 1e-14);
    CHECK(test::max_abs_difference(cut(gp.dk), gr.dk) < 1e-14);
    CHECK(test::max_abs_difference(cut(gp.dv), gr.dv) < 1e-14);
  }
}

// ---- CUDA against the CPU reference ----

namespace {

// Documents of random lengths in [1, max_len] per row, plus starts at the given positions
// (segment and tile edges): seq_idx (batch, len) i32.
Tensor random_seq_idx(int64_t batch, int64_t len, int64_t max_len, uint64_t seed,
                      const std::vector<int64_t>& forced_starts = {}) {
  Generator gen(seed);
  std::vector<int32_t> v(size_t(batch * len));
  for (int64_t b = 0; b < batch; ++b) {
    int32_t doc = 0;
    int64_t left = 1 + int64_t(gen.next_below(uint64_t(max_len)));
    for (int64_t t = 0; t < len; ++t) {
      bool forced = false;
      for (int64_t s : forced_starts) forced |= s == t;
      if (t > 0 && (left == 0 || forced)) {
        ++doc;
        left = 1 + int64_t(gen.next_below(uint64_t(max_len)));
      }
      v[size_t(b * len + t)] = doc;
      --left;
    }
  }
  return Tensor::from_vector(v, {batch, len}, DType::i32);
}

}  // namespace

TEST_CASE("document bounds on CUDA match the CPU reference", "[documents][cuda]") {
  for (int64_t len : {1, 5, 1024, 1025, 3000}) {
    INFO("length " << len);
    Tensor s = random_seq_idx(3, len, 300, uint64_t(len), {1023, 1024, 2047});
    Tensor sd = s.to(Device::cuda());
    CHECK(document_starts(sd).to_vector<int32_t>() == document_starts(s).to_vector<int32_t>());
    CHECK(document_positions(sd).to_vector<int64_t>() == document_positions(s).to_vector<int64_t>());
  }
}

TEST_CASE("conv1d CUDA with documents and carried state matches the CPU reference", "[documents][cuda]") {
  struct Case {
    int64_t batch, dim, len, K, max_doc;
    bool init;
  };
  // Starts at segment edges (the kernel walks 128-step segments) and in their halos.
  const std::vector<int64_t> edges = {1, 2, 126, 127, 128, 129, 130, 255, 256, 257};
  const Case cases[] = {{2, 5, 1, 4, 3, true},      {1, 3, 7, 4, 2, true},      {2, 37, 1000, 4, 40, true},
                        {1, 8, 513, 4, 1, false},   {3, 6, 300, 3, 200, true},  {2, 4, 260, 2, 5, true},
                        {1, 4, 260, 1, 7, false},   {2, 3, 200, 8, 9, true},    {2, 300, 260, 4, 130, true},
                        {1, 16, 2, 8, 1, true}};
  for (const Case& c : cases)
    for (DType dt : {DType::f32, DType::bf16}) {
      INFO("batch " << c.batch << " dim " << c.dim << " len " << c.len << " K " << c.K << " init " << c.init
                    << " dtype " << dtype_name(dt));
      Generator gen(uint64_t(c.len * 7 + c.K));
      auto rounded = [&](const Shape& s) { return randn(s, gen, DType::f32).to(dt).to(DType::f32); };
      Tensor x = rounded({c.batch, c.len, c.dim}), go = rounded({c.batch, c.len, c.dim});
      Tensor w = randn({c.dim, c.K}, gen, DType::f32, Device::cpu(), 0.5), b = randn({c.dim}, gen, DType::f32);
      Conv1dOptions o;
      o.seq_idx = random_seq_idx(c.batch, c.len, c.max_doc, uint64_t(c.dim), edges);
      if (c.init) o.initial_state = rounded({c.batch, c.K - 1, c.dim});
      Tensor fin_ref, fin;
      Tensor ref = conv1d_forward(x, w, b, true, o, &fin_ref);
      Conv1dGrads gref = conv1d_backward(go, x, w, b, true, o);
      Conv1dOptions od;
      od.seq_idx = o.seq_idx.to(Device::cuda());
      if (c.init) od.initial_state = o.initial_state.to(Device::cuda(), dt);
      Tensor xd = x.to(Device::cuda(), dt), wd = w.to(Device::cuda()), bd = b.to(Device::cuda());
      Tensor got = conv1d_forward(xd, wd, bd, true, od, &fin);
      Conv1dGrads g = conv1d_backward(go.to(Device::cuda(), dt), xd, wd, bd, true, od);
      const double tol = dt == DType::bf16 ? 1e-2 : 1e-5;
      CHECK(relative_error(got, ref) < tol);
      CHECK(test::max_abs_difference(fin, fin_ref) == 0.0);  // copies of inputs
      CHECK(relative_error(g.dx, gref.dx) < tol);
      CHECK(relative_error(g.dweight, gref.dweight) < tol);
      CHECK(relative_error(g.dbias, gref.dbias) < tol);
      if (c.init && c.K > 1) CHECK(relative_error(g.dinitial_state, gref.dinitial_state) < tol);
      Conv1dGrads g2 = conv1d_backward(go.to(Device::cuda(), dt), xd, wd, bd, true, od);
      CHECK(test::bitwise_equal(g.dweight, g2.dweight));
      CHECK(test::bitwise_equal(g.dx, g2.dx));
    }
}

TEST_CASE("attention CUDA with documents matches the CPU reference and stays deterministic",
          "[documents][cuda]") {
  struct Case {
    int64_t B, T, H, hd, window, max_doc;
  };
  // Starts at the kernels' tile edges (16, 32, 64, 128 rows) and beside them.
  const std::vector<int64_t> edges = {1, 15, 16, 31, 32, 63, 64, 65, 127, 128, 129, 511};
  const Case cases[] = {{2, 1, 2, 64, 0, 1},      {2, 17, 3, 64, 0, 4},      {2, 256, 2, 96, 0, 60},
                        {1, 700, 2, 128, 0, 500}, {2, 333, 2, 64, 50, 90},   {1, 2048, 2, 64, 0, 500},
                        {1, 1000, 1, 128, 300, 1}, {2, 130, 2, 96, 7, 33}};
  uint64_t seed = 900;
  for (const Case& c : cases)
    for (bool packed : {false, true}) {
      INFO("B " << c.B << " T " << c.T << " H " << c.H << " hd " << c.hd << " window " << c.window << " documents <= "
                << c.max_doc << (packed ? " packed" : " separate"));
      Shape s{c.B, c.T, c.H, c.hd};
      Device gpu = Device::cuda();
      seed += 10;
      Tensor q = random_normal(s, seed, DType::bf16, gpu, 1.3), k = random_normal(s, seed + 1, DType::bf16, gpu, 1.3),
             v = random_normal(s, seed + 2, DType::bf16, gpu), g = random_normal(s, seed + 3, DType::bf16, gpu);
      AttentionOptions o;
      o.window = c.window;
      o.seq_idx = random_seq_idx(c.B, c.T, c.max_doc, seed, edges);
      Tensor qc = q.to(Device::cpu(), DType::f32), kc = k.to(Device::cpu(), DType::f32),
             vc = v.to(Device::cpu(), DType::f32), gc = g.to(Device::cpu(), DType::f32);
      AttentionOutput ref = attention_forward(qc, kc, vc, o);
      AttentionGrads rg = attention_backward(gc, qc, kc, vc, ref.out, ref.lse, o);
      AttentionOptions od = o;
      od.seq_idx = o.seq_idx.to(gpu);
      AttentionOutput r;
      AttentionGrads d, d2;
      if (packed) {
        Shape s1{c.B, c.T, 1, c.H, c.hd};
        Tensor qkv = concat({q.reshape(s1), k.reshape(s1), v.reshape(s1)}, 2);
        r = attention_forward_packed(qkv, od);
        std::vector<Tensor> parts = split(attention_backward_packed(g, qkv, r.out, r.lse, od), {1, 1, 1}, 2);
        d.dq = parts[0].reshape(s);
        d.dk = parts[1].reshape(s);
        d.dv = parts[2].reshape(s);
      } else {
        r = attention_forward(q, k, v, od);
        d = attention_backward(g, q, k, v, r.out, r.lse, od);
        d2 = attention_backward(g, q, k, v, r.out, r.lse, od);
        CHECK(test::bitwise_equal(d.dq, d2.dq));
        CHECK(test::bitwise_equal(d.dk, d2.dk));
        CHECK(test::bitwise_equal(d.dv, d2.dv));
      }
      const double tol = 1.5e-2;  // bf16 products
      CHECK(relative_error(r.out, ref.out) < tol);
      CHECK(relative_error(r.lse, ref.lse) < 1e-3);
      // Where every document is one token, each query's softmax has one key and dq, dk vanish
      // (exactly on the CPU, to bf16 rounding on the GPU): their error is taken relative to the
      // larger of their own norm and dv's, the scale of the gradients.
      auto norm = [](const Tensor& t) {
        double s2 = 0;
        for (double x : t.to_vector<double>()) s2 += x * x;
        return std::sqrt(s2);
      };
      auto gradient_error = [&](const Tensor& a, const Tensor& b) {
        const Tensor ac = a.to(Device::cpu(), DType::f32);
        std::vector<double> x = ac.to_vector<double>(), y = b.to_vector<double>();
        double d2 = 0;
        for (size_t i = 0; i < x.size(); ++i) d2 += (x[i] - y[i]) * (x[i] - y[i]);
        return std::sqrt(d2) / std::max({norm(b), norm(rg.dv), 1e-30});
      };
      CHECK(gradient_error(d.dq, rg.dq) < 2 * tol);
      CHECK(gradient_error(d.dk, rg.dk) < 2 * tol);
      CHECK(relative_error(d.dv, rg.dv) < 2 * tol);
    }
}

TEST_CASE("selective scan CUDA with documents matches the CPU reference", "[documents][cuda]") {
  struct Case {
    int64_t batch, dim, len, state, max_doc;
    bool h0;
  };
  // Starts at the CUDA scan's chunk (32) and checkpoint (64) edges and beside them.
  const std::vector<int64_t> edges = {1, 31, 32, 33, 63, 64, 65, 127, 128, 2047, 2048};
  const Case cases[] = {{2, 37, 1, 16, 1, true},      {1, 5, 7, 4, 2, false},      {2, 37, 128, 16, 30, true},
                        {1, 70, 1000, 16, 500, true}, {1, 9, 2048, 64, 500, false}, {1, 33, 4097, 16, 700, true},
                        {2, 17, 300, 8, 1, true},     {2, 104, 300, 16, 64, true},  {1, 128, 129, 64, 40, true}};
  // Under both CUDA backward main kernels (ScanBackward).
  const ScanBackward before = scan_backward_kind();
  for (ScanBackward kind : {ScanBackward::one_channel, ScanBackward::channel_pairs})
  for (const Case& c : cases)
    for (DType dtype : {DType::f32, DType::bf16}) {
      set_scan_backward_kind(kind);
      INFO("batch " << c.batch << " dim " << c.dim << " len " << c.len << " state " << c.state << " documents <= "
                    << c.max_doc << " h0 " << c.h0 << " dtype " << dtype_name(dtype) << " backward kernel "
                    << (kind == ScanBackward::one_channel ? "one" : "pairs"));
      ScanArgs host =
          test::random_scan_args(c.batch, c.len, c.dim, c.state, uint64_t(c.len + c.state), DType::f32, c.h0);
      host.seq_idx = random_seq_idx(c.batch, c.len, c.max_doc, uint64_t(c.dim), edges);
      for (Tensor* t : {&host.u, &host.delta, &host.B, &host.C, &host.z}) *t = t->to(dtype).to(DType::f32);
      ScanArgs dev = host;
      for (Tensor* t : {&dev.u, &dev.delta, &dev.B, &dev.C, &dev.z}) *t = t->to(Device::cuda(), dtype);
      for (Tensor* t : {&dev.A, &dev.D, &dev.delta_bias, &dev.initial_state, &dev.seq_idx})
        if (t->defined()) *t = t->to(Device::cuda());
      Generator gen(uint64_t(c.len));
      Tensor gout = randn(host.u.shape(), gen, DType::f32).to(dtype).to(DType::f32);
      Tensor gfin = randn({c.batch, c.dim, c.state}, gen, DType::f32);
      ScanResult ref = selective_scan_forward(host);
      ScanGrads gref = selective_scan_backward(host, ref, gout, gfin);
      ScanResult got = selective_scan_forward(dev);
      ScanGrads g = selective_scan_backward(dev, got, gout.to(Device::cuda(), dtype), gfin.to(Device::cuda()), true);
      ScanGrads g2 = selective_scan_backward(dev, got, gout.to(Device::cuda(), dtype), gfin.to(Device::cuda()), true);
      const double tol = dtype == DType::bf16 ? 2e-2 : 5e-4;
      CHECK(relative_error(got.out, ref.out) < tol);
      CHECK(relative_error(got.final_state, ref.final_state) < tol);
      const char* names[] = {"du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial_state"};
      std::vector<Tensor> a = {g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.ddelta_bias, g.dinitial_state};
      std::vector<Tensor> b = {gref.du,  gref.ddelta, gref.dA,          gref.dB,         gref.dC,
                               gref.dD,  gref.dz,     gref.ddelta_bias, gref.dinitial_state};
      std::vector<Tensor> a2 = {g2.du, g2.ddelta, g2.dA, g2.dB, g2.dC, g2.dD, g2.dz, g2.ddelta_bias, g2.dinitial_state};
      for (size_t i = 0; i < a.size(); ++i) {
        INFO(names[i]);
        REQUIRE(a[i].defined() == b[i].defined());
        if (!a[i].defined()) continue;
        CHECK(relative_error(a[i], b[i]) < tol);
        CHECK(test::bitwise_equal(a[i], a2[i]));  // deterministic mode
      }
    }
  set_scan_backward_kind(before);
}

// ---- whole models ----

#include "layers/model.h"

namespace {

using layers::LanguageModel;
using layers::ModelConfig;
using layers::ModelState;
using layers::SequenceContext;

// A small f64 model of a family (CPU), for exact comparisons.
ModelConfig small_model(const std::string& family) {
  ModelConfig c = ModelConfig::preset(family);
  c.d_model = 16;  // 2 heads of 8
  c.vocab_size = 29;
  c.dtype = layers::ComputeDType::f64;
  return c;
}

Tensor tokens_of(int64_t B, int64_t T, int64_t vocab, uint64_t seed) {
  Generator gen(seed);
  std::vector<int64_t> v(static_cast<size_t>(B * T));
  for (auto& x : v) x = int64_t(gen.next_below(uint64_t(vocab)));
  return Tensor::from_vector(v, {B, T});
}

// Every parameter's gradient after backward of loss scaled by `weight`, accumulated into sums.
void add_gradients(LanguageModel& m, const autograd::Variable& loss, double weight,
                   std::vector<std::vector<double>>& sums) {
  loss.backward(Tensor::full(loss.shape(), weight, loss.dtype()));
  auto params = m.named_parameters();
  sums.resize(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<double> g = params[i].second->var.grad().to_vector<double>();
    sums[i].resize(g.size(), 0.0);
    for (size_t k = 0; k < g.size(); ++k) sums[i][k] += g[k];
  }
  m.zero_grad();
}

double largest_difference(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  double worst = a.size() == b.size() ? 0.0 : INFINITY;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    for (size_t k = 0; k < a[i].size(); ++k) worst = std::max(worst, std::abs(a[i][k] - b[i][k]));
  return worst;
}

}  // namespace

TEST_CASE("two documents packed into one window with resets: the loss and gradients of each alone",
          "[documents][models]") {
  const int64_t La = 6, Lb = 9;
  for (std::string family : {"mamba-tiny", "transformer++-tiny", "hybrid-tiny", "gpt2-tiny"}) {
    INFO(family);
    LanguageModel m(small_model(family), 3);
    const int64_t V = m.config().vocab_size;
    Tensor xa = tokens_of(1, La, V, 1), ya = tokens_of(1, La, V, 2), xb = tokens_of(1, Lb, V, 3),
           yb = tokens_of(1, Lb, V, 4);
    Tensor x = concat({xa, xb}, 1), y = concat({ya, yb}, 1);
    SequenceContext docs;
    docs.seq_idx = seq_idx_of({{La, Lb}});

    std::vector<std::vector<double>> packed, alone;
    autograd::Variable lp = m.loss(x, y, -100, docs);
    const double packed_loss = lp.value().item();
    add_gradients(m, lp, 1.0, packed);
    autograd::Variable la = m.loss(xa, ya), lb = m.loss(xb, yb);
    const double wa = double(La) / double(La + Lb), wb = double(Lb) / double(La + Lb);
    const double alone_loss = wa * la.value().item() + wb * lb.value().item();
    add_gradients(m, la, wa, alone);
    add_gradients(m, lb, wb, alone);
    // RoPE computes its angles in fp32 from the absolute position, so a document at offset 6
    // rotates by angles rounded differently (relative to 1e-7); the other families agree to
    // the last bits.
    const bool rope = m.config().attention.positions == layers::Positions::rope && m.config().has_attention();
    const double tol = rope ? 1e-7 : 1e-12;
    CHECK(std::abs(packed_loss - alone_loss) < tol);
    CHECK(largest_difference(packed, alone) < 10 * tol);
    // Without the resets the second document sees the first: the losses differ.
    CHECK(std::abs(m.loss(x, y).value().item() - alone_loss) > 1e-4);
  }
}

TEST_CASE("carried state over k windows gives the loss of one pass over the concatenation", "[documents][models]") {
  // Mamba only (attention layers see their window alone). Row 0 holds documents of 7, 3 and 5
  // tokens: a start inside window 1 (t = 7) and one at the first position of window 2
  // (t = 10), where the caller zeros the row's carried state; row 1 is one document.
  const int64_t L = 5, k = 3;
  LanguageModel m(small_model("mamba-tiny"), 4);
  const int64_t V = m.config().vocab_size;
  Tensor x = tokens_of(2, k * L, V, 5), y = tokens_of(2, k * L, V, 6);
  Tensor seq_idx = seq_idx_of({{7, 3, 5}, {15}});
  SequenceContext whole;
  whole.seq_idx = seq_idx;
  const double full = m.loss(x, y, -100, whole).value().item();

  ModelState state = m.zero_state(2);
  double windows = 0;
  for (int64_t w = 0; w < k; ++w) {
    if (w * L == 10) layers::zero_state_row(state, 0);
    ModelState next;
    SequenceContext c;
    c.seq_idx = time_slice(seq_idx, w * L, (w + 1) * L);
    c.initial = &state;
    c.final = &next;
    windows += m.loss(time_slice(x, w * L, (w + 1) * L), time_slice(y, w * L, (w + 1) * L), -100, c).value().item();
    state = next;
  }
  CHECK(std::abs(windows / double(k) - full) < 1e-12);
  // Windows from zero state each time differ (the test can tell).
  double fresh = 0;
  for (int64_t w = 0; w < k; ++w) {
    SequenceContext c;
    c.seq_idx = time_slice(seq_idx, w * L, (w + 1) * L);
    fresh += m.loss(time_slice(x, w * L, (w + 1) * L), time_slice(y, w * L, (w + 1) * L), -100, c).value().item();
  }
  CHECK(std::abs(fresh / double(k) - full) > 1e-6);
}

// ---- data: documents and the sequential sampler ----

#include <cstdlib>
#include <filesystem>

#include "data/hdf5_util.h"
#include "data/loader.h"
#include "data/token_file.h"
#include "tests/files.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"

namespace {

namespace fs = std::filesystem;

// A token file with /tokens and the root attributes only (no /doc_offsets), as other tools
// may write it.
void write_raw_tokens(const fs::path& path, const std::vector<uint16_t>& ids, int64_t vocab, int64_t eot) {
  h5::Handle f = h5::create_file(path.string());
  h5::write_dataset(f, "tokens", H5T_NATIVE_UINT16, {hsize_t(ids.size())}, ids.data(), path.string());
  h5::write_attr_i64(f, "vocab_size", vocab);
  h5::write_attr_str(f, "tokenizer", "test");
  h5::write_attr_i64(f, "eot_token", eot);
}

data::DataOptions sequential(const fs::path& path, int64_t seq_len, int64_t slots, int64_t vocab) {
  data::DataOptions o;
  o.kind = "tokens";
  o.path = path.string();
  o.vocab_size = vocab;
  o.seq_len = seq_len;
  o.val_fraction = 0;
  o.sampler = "sequential";
  o.slots = slots;
  o.reset_at_eot = true;
  return o;
}

std::vector<int32_t> row_of(const Tensor& t, int64_t row) {
  std::vector<int32_t> v = t.to_vector<int32_t>();
  const int64_t L = t.size(1);
  return std::vector<int32_t>(v.begin() + row * L, v.begin() + (row + 1) * L);
}

}  // namespace

TEST_CASE("reset_at_eot: documents from end-of-text tokens, windows in order, continuation flags",
          "[documents][data]") {
  fs::path dir = test::fresh_dir("coil_test_documents", "eot");
  // 25 tokens, eot 19: documents end at positions 2, 4, 5, 11 and 16.
  const std::vector<uint16_t> ids = {1, 2, 19, 3, 19, 19, 4, 5, 6, 7, 8, 19, 9, 10, 11, 12,
                                     19, 13, 14, 15, 16, 17, 18, 1, 2};
  write_raw_tokens(dir / "eot.h5", ids, 20, 19);
  data::DataLoader l(sequential(dir / "eot.h5", 8, 1, 20));
  data::Batch w0 = l.next_train(1), w1 = l.next_train(1), w2 = l.next_train(1), again = l.next_train(1);
  CHECK(row_of(w0.seq_idx, 0) == std::vector<int32_t>{0, 0, 0, 1, 1, 2, 3, 3});
  CHECK(row_of(w1.seq_idx, 0) == std::vector<int32_t>{0, 0, 0, 0, 1, 1, 1, 1});
  CHECK(row_of(w2.seq_idx, 0) == std::vector<int32_t>{0, 1, 1, 1, 1, 1, 1, 1});
  CHECK(w1.inputs.to_vector<int64_t>()[0] == 6);  // the window after window 0
  CHECK_FALSE(w0.continues[0]);                    // the start of the stream
  CHECK(w1.continues[0]);
  CHECK(w2.continues[0]);
  CHECK_FALSE(again.continues[0]);  // three windows in the slot's run: it starts again
  CHECK(again.inputs.to_vector<int64_t>() == w0.inputs.to_vector<int64_t>());

  // Without an eot token and without /doc_offsets the documents are unknown.
  write_raw_tokens(dir / "none.h5", ids, 20, -1);
  CHECK_THROWS_WITH(data::DataLoader(sequential(dir / "none.h5", 8, 1, 20)),
                    Contains("none.h5' has no end-of-text token") && Contains("no /doc_offsets"));
  // The random sampler: documents too, no row continues.
  data::DataOptions random = sequential(dir / "eot.h5", 8, 1, 20);
  random.sampler = "random";
  data::Batch r = data::DataLoader(random).next_train(4);
  CHECK(r.seq_idx.shape() == Shape({4, 8}));
  for (bool c : r.continues) CHECK_FALSE(c);
}

TEST_CASE("reset_at_eot: documents from /doc_offsets; a document at a window's start ends the continuation",
          "[documents][data]") {
  fs::path dir = test::fresh_dir("coil_test_documents", "offsets");
  {
    data::TokenWriter w((dir / "docs.h5").string(), 50, "test", -1);  // no eot tokens: offsets only
    std::vector<uint32_t> doc;
    for (int64_t len : {3, 9, 4, 6, 9}) {  // starts at 0, 3, 12, 16, 22; 31 tokens
      doc.assign(size_t(len), uint32_t(len));
      w.append(doc);
      w.end_document();
    }
    w.close();
  }
  // Two slots of 30 / 4 = 7 windows, 3 each (one left over): slot 0 reads windows 0-2, slot 1 3-5.
  data::DataLoader l(sequential(dir / "docs.h5", 4, 2, 50));
  data::Batch a = l.next_train(2), b = l.next_train(2), c = l.next_train(2);
  CHECK(row_of(a.seq_idx, 0) == std::vector<int32_t>{0, 0, 0, 1});  // window [0, 4): a start at 3
  CHECK(row_of(a.seq_idx, 1) == std::vector<int32_t>{0, 0, 0, 0});  // window [12, 16): starts at 12
  CHECK(row_of(b.seq_idx, 0) == std::vector<int32_t>{0, 0, 0, 0});  // [4, 8)
  CHECK(row_of(b.seq_idx, 1) == std::vector<int32_t>{0, 0, 0, 0});  // [16, 20): starts at 16
  CHECK(row_of(c.seq_idx, 1) == std::vector<int32_t>{0, 0, 1, 1});  // [20, 24): a start at 22
  CHECK(a.inputs.to_vector<int64_t>()[4] == 4);                      // slot 1 begins at window 3
  CHECK(b.continues[0]);
  CHECK_FALSE(b.continues[1]);  // window [16, 20) begins a document
  CHECK(c.continues[0]);
  CHECK(c.continues[1]);
  // More slots than windows.
  CHECK_THROWS_WITH(data::DataLoader(sequential(dir / "docs.h5", 4, 8, 50)),
                    Contains("8 sequence slots") && Contains("only 7 non-overlapping training windows"));
}

TEST_CASE("documents and carried state: bad configurations are errors that say why", "[documents][config]") {
  using train::parse_config;
  CHECK_THROWS_WITH(parse_config("data:\n  reset_at_eot: true\n", "x.yaml"),
                    Contains("x.yaml:2: data.reset_at_eot needs token files"));
  CHECK_THROWS_WITH(parse_config("data:\n  sampler: sequential\n", "x.yaml"),
                    Contains("x.yaml:2: data.sampler: sequential orders the windows of a token stream"));
  const std::string tokens = "data:\n  kind: tokens\n  path: x.h5\n";
  CHECK_THROWS_WITH(parse_config(tokens + "train:\n  carry_state: true\n", "x.yaml"),
                    Contains("x.yaml:5: train.carry_state") && Contains("set data.sampler: sequential"));
  CHECK_THROWS_WITH(parse_config(tokens + "  sampler: sequential\ntrain:\n  carry_state: true\n", "x.yaml",
                                 {"model.preset=transformer++-tiny"}),
                    Contains("the model has no Mamba layers"));
  CHECK_NOTHROW(parse_config(tokens + "  sampler: sequential\n  reset_at_eot: true\ntrain:\n  carry_state: true\n",
                             "x.yaml"));
}

namespace {

// A tiny carried-state run on a token file of byte-like ids with an eot every 13 tokens.
train::Config carried_run(const std::string& name, std::vector<std::string> extra = {}) {
  fs::path dir = test::fresh_dir("coil_test_documents", name);
  {
    data::TokenWriter w((dir / "tokens.h5").string(), 32, "test", 31);
    std::vector<uint32_t> doc;
    for (int d = 0; d < 150; ++d) {
      doc.clear();
      for (int i = 0; i < 12; ++i) doc.push_back(uint32_t((d * 7 + i * 3) % 31));
      w.append(doc);
      w.end_document();
    }
    w.close();
  }
  std::vector<std::string> sets = {"run.dir=" + (dir / "run").string(), "model.preset=mamba-tiny", "model.d_model=32",
                                   "model.vocab_size=32", "data.kind=tokens", "data.path=" + (dir / "tokens.h5").string(),
                                   "data.sampler=sequential", "data.reset_at_eot=true", "train.carry_state=true",
                                   "train.seq_len=16", "train.micro_batch=2", "train.steps=4", "train.device=cpu",
                                   "eval.every=0", "eval.batches=0", "checkpoint.every=2", "log.every=2"};
  for (auto& e : extra) sets.push_back(e);
  return train::parse_config("", name + ".yaml", sets);
}

train::TrainOptions quiet_run() {
  train::TrainOptions o;
  o.quiet = true;
  o.install_signal_handlers = false;
  return o;
}

}  // namespace

TEST_CASE("carried state: data parallel and a changed micro-batch are refused with the reason", "[documents][trainer]") {
  // Several ranks: refused before anything starts.
  ::setenv("RANK", "0", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  CHECK_THROWS_WITH(train::run_training(carried_run("ranks"), quiet_run()),
                    Contains("train.carry_state with 2 ranks") && Contains("one process"));
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");

  // A run whose config was edited to another micro-batch cannot take the carried states over.
  train::Config c = carried_run("micro_batch");
  train::TrainOptions stop = quiet_run();
  stop.stop_after_steps = 2;
  train::run_training(c, stop);
  train::Checkpoint saved = train::read_checkpoint(train::list_checkpoints(c.run_dir()).back());
  REQUIRE(saved.carried.size() == 4);  // conv and ssm state of both Mamba layers
  CHECK(saved.carried[0].second.size(0) == 2);
  train::Config edited = train::load_run_config(c.run_dir(), {"train.micro_batch=1"});
  test::write_text(fs::path(c.run_dir()) / "config.yaml", train::to_yaml(edited));
  train::TrainOptions resume = quiet_run();
  resume.resume = true;
  CHECK_THROWS_WITH(train::run_training(edited, resume),
                    Contains("carries the states of 2 sequence slots, but this run has 1") &&
                        Contains("cannot be split or merged"));
}
