// The decode kernels (kernels/decode.h): stepping the CPU references through a sequence gives
// the parallel kernels' outputs (conv1d, selective scan, attention), RoPE at per-row positions,
// errors; [cuda]: every decode kernel against the CPU reference at awkward sizes.
#include <cmath>

#include "core/random.h"
#include "kernels/conv1d.h"
#include "kernels/decode.h"
#include "kernels/elementwise.h"
#include "kernels/layout.h"
#include "kernels/rope.h"
#include "kernels/selective_scan.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::kernels;
using Catch::Matchers::Contains;

namespace {

// x[:, t] of a (batch, length, ...) tensor, as (batch, ...).
Tensor at(const Tensor& x, int64_t t) {
  Shape s = x.shape();
  s.erase(s.begin() + 1);
  return narrow(x, 1, t, 1).reshape(s);
}

Tensor positions_of(std::vector<int32_t> p, Device device = Device::cpu()) {
  return Tensor::from_vector(p, {int64_t(p.size())}, DType::i32, device);
}

// The arguments of one Mamba step, (batch, ...) each, drawn at random; on `device` in `dtype`
// (the parameters and the state f32 on a GPU, `dtype` on the CPU).
struct StepInputs {
  Tensor state, x, delta, A_log, x_dbl, D, xz, delta_bias;
  StateUpdateArgs args() const { return {state, x, delta, A_log, x_dbl, D, xz, delta_bias}; }
};

StepInputs random_step(int64_t batch, int64_t dim, int64_t n_state, int64_t rank, uint64_t seed, bool with_d,
                       bool with_bias) {
  Generator g(seed);
  StepInputs s;
  s.state = randn({batch, dim, n_state}, g);
  s.x = randn({batch, dim}, g);
  s.delta = randn({batch, dim}, g);
  s.A_log = randn({dim, n_state}, g, DType::f32, Device::cpu(), 0.0, 0.5);
  s.x_dbl = randn({batch, rank + 2 * n_state}, g);
  if (with_d) s.D = randn({dim}, g);
  s.xz = randn({batch, 2 * dim}, g);
  if (with_bias) s.delta_bias = randn({dim}, g);
  return s;
}

}  // namespace

TEST_CASE("conv1d_update stepped through a sequence gives conv1d_forward's outputs", "[decode]") {
  for (int64_t width : {1, 2, 4}) {
    INFO("width " << width);
    const int64_t B = 2, L = 7, D = 5;
    Generator g{uint64_t(width)};
    Tensor x = randn({B, L, D}, g), w = randn({D, width}, g), bias = randn({D}, g), z = randn({B, D}, g);
    Tensor reference = conv1d_forward(x, w, bias, /*silu=*/true);
    Tensor state = Tensor::zeros({B, width - 1, D});
    for (int64_t t = 0; t < L; ++t) {
      Tensor out = conv1d_update(state, concat({at(x, t), z}, 1), w, bias);
      CHECK(test::relative_error(out, at(reference, t)) < 1e-6);
    }
    if (width > 1) CHECK(test::relative_error(state, narrow(x, 1, L - width + 1, width - 1)) == 0);
  }
}

TEST_CASE("selective_state_update stepped through a sequence gives the scan's outputs and final state", "[decode]") {
  const int64_t B = 2, L = 6, D = 5, N = 3, R = 2;
  Generator g(7);
  ScanArgs scan;
  scan.u = randn({B, L, D}, g);
  scan.delta = randn({B, L, D}, g);
  Tensor A_log = randn({D, N}, g, DType::f32, Device::cpu(), 0.0, 0.5);
  scan.A = scale(exp(A_log), -1.0);
  scan.B = randn({B, L, N}, g);
  scan.C = randn({B, L, N}, g);
  scan.D = randn({D}, g);
  scan.z = randn({B, L, D}, g);
  scan.delta_bias = randn({D}, g);
  scan.delta_softplus = true;
  ScanResult reference = selective_scan_forward(scan);
  // The kernel reads B and C from x_proj's output and z from in_proj's: their other columns
  // (dt, and x) are never read.
  Tensor state = Tensor::zeros({B, D, N}), dt_columns = randn({B, R}, g), x_columns = randn({B, D}, g);
  for (int64_t t = 0; t < L; ++t) {
    StateUpdateArgs a;
    a.state = state;
    a.x = at(scan.u, t);
    a.delta = at(scan.delta, t);
    a.A_log = A_log;
    a.x_dbl = concat({dt_columns, at(scan.B, t), at(scan.C, t)}, 1);
    a.D = scan.D;
    a.xz = concat({x_columns, at(scan.z, t)}, 1);
    a.delta_bias = scan.delta_bias;
    CHECK(test::relative_error(selective_state_update(a), at(reference.out, t)) < 1e-5);
  }
  CHECK(test::relative_error(state, reference.final_state) < 1e-5);
}

TEST_CASE("append_kv and attention_decode stepped through a sequence give causal attention's outputs", "[decode]") {
  const int64_t B = 2, T = 9, H = 2, hd = 8;
  for (int64_t window : {0, 3}) {
    INFO("window " << window);
    Generator g{uint64_t(11 + window)};
    Tensor qkv = randn({B, T, 3, H, hd}, g);
    AttentionOptions o;
    o.window = window;
    Tensor reference = attention_forward_packed(qkv, o).out;  // (B, T, H, hd)
    Tensor k = Tensor::zeros({B, H, T + 2, hd}), v = Tensor::zeros({B, H, T + 2, hd});
    Tensor positions = positions_of({0, 0});
    for (int64_t t = 0; t < T; ++t) {
      Tensor token = narrow(qkv, 1, t, 1);
      append_kv(token, k, v, positions);
      CHECK(test::relative_error(attention_decode(token, k, v, positions, o), at(reference, t)) < 1e-6);
      advance_positions(positions, 1);
    }
    CHECK(positions.to_vector<int32_t>() == std::vector<int32_t>{int32_t(T), int32_t(T)});
  }
}

TEST_CASE("rows at different positions: append_kv of a prompt per row, then one decode step", "[decode]") {
  const int64_t T = 7, H = 1, hd = 4;
  Generator g(5);
  Tensor seq0 = randn({1, T, 3, H, hd}, g), seq1 = randn({1, T, 3, H, hd}, g);
  Tensor ref0 = attention_forward_packed(seq0).out, ref1 = attention_forward_packed(seq1).out;
  Tensor k = Tensor::zeros({2, H, T, hd}), v = Tensor::zeros({2, H, T, hd});
  Tensor positions = positions_of({0, 0});
  append_kv(narrow(seq0, 1, 0, 3), k.narrow0(0, 1), v.narrow0(0, 1), positions.narrow0(0, 1));  // 3 tokens
  append_kv(narrow(seq1, 1, 0, 5), k.narrow0(1, 2), v.narrow0(1, 2), positions.narrow0(1, 2));  // 5 tokens
  positions = positions_of({3, 5});
  Tensor step = concat({narrow(seq0, 1, 3, 1), narrow(seq1, 1, 5, 1)}, 0);  // each row's next token
  append_kv(step, k, v, positions);
  Tensor out = attention_decode(step, k, v, positions);
  CHECK(test::relative_error(out.narrow0(0, 1), narrow(ref0, 1, 3, 1)) < 1e-6);
  CHECK(test::relative_error(out.narrow0(1, 2), narrow(ref1, 1, 5, 1)) < 1e-6);
}

TEST_CASE("rope at per-row positions rotates each row as rope at that offset", "[decode]") {
  Generator g(3);
  Tensor qkv = randn({2, 1, 3, 2, 6}, g);
  RopeOptions at_rows;
  at_rows.positions = positions_of({4, 9});
  at_rows.position_offset = 1;
  Tensor rotated = rope(qkv, at_rows);
  for (int64_t b = 0; b < 2; ++b) {
    RopeOptions offset;
    offset.position_offset = (b == 0 ? 4 : 9) + 1;
    CHECK(test::relative_error(rotated.narrow0(b, b + 1), rope(qkv.narrow0(b, b + 1), offset)) == 0);
  }
  RopeOptions wrong;
  wrong.positions = positions_of({1, 2, 3});
  CHECK_THROWS_WITH(rope(qkv, wrong), Contains("positions must be i32 [2]"));
}

TEST_CASE("decode kernels reject bad shapes, dtypes and positions past the cache", "[decode]") {
  Tensor w = Tensor::zeros({4, 3});
  CHECK_THROWS_WITH(conv1d_update(Tensor::zeros({2, 3, 4}), Tensor::zeros({2, 8}), w, Tensor()),
                    Contains("conv_state must be (batch, width - 1 = 2, dim = 4)"));
  CHECK_THROWS_WITH(conv1d_update(Tensor::zeros({2, 2, 4}), Tensor::zeros({2, 4}), w, Tensor()),
                    Contains("xz must have shape [2, 8]"));
  CHECK_THROWS_WITH(conv1d_update(Tensor::zeros({2, 2, 4}), Tensor::zeros({2, 8}, DType::f64), w, Tensor()),
                    Contains("conv_state must be f64"));
  StepInputs s = random_step(2, 4, 3, 2, 1, true, true);
  StateUpdateArgs a = s.args();
  a.x_dbl = Tensor::zeros({2, 5});
  CHECK_THROWS_WITH(selective_state_update(a), Contains("x_dbl must be (batch = 2"));
  Tensor k = Tensor::zeros({1, 2, 4, 8}), v = Tensor::zeros({1, 2, 4, 8});
  Tensor qkv = Tensor::zeros({1, 1, 3, 2, 8});
  CHECK_THROWS_WITH(append_kv(qkv, k, v, positions_of({4})), Contains("positions[0] = 4 is outside [0, 4)"));
  CHECK_THROWS_WITH(attention_decode(qkv, k, v, positions_of({4})), Contains("positions[0] = 4 is outside [0, 4)"));
  CHECK_THROWS_WITH(attention_decode(Tensor::zeros({1, 3, 8}), k, v, positions_of({0})), Contains("q must be"));
  CHECK_THROWS_WITH(append_kv(qkv, k, Tensor::zeros({1, 2, 5, 8}), positions_of({0})),
                    Contains("v_cache must have shape [1, 2, 4, 8]"));
  CHECK_THROWS_WITH(append_kv(qkv, k, v, Tensor::zeros({1}, DType::i64)), Contains("positions must be i32"));
}

// ---- CUDA against the CPU reference ----

namespace {

// A copy rounded through `dtype` (so the CPU reference sees the values the GPU kernel reads).
Tensor rounded(const Tensor& x, DType dtype) { return x.to(dtype).to(DType::f32); }

}  // namespace

TEST_CASE("conv1d_update CUDA matches the CPU reference", "[decode][cuda]") {
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t width : {2, 4})
      for (int64_t dim : {5, 130}) {
        INFO(dtype_name(dtype) << " width " << width << " dim " << dim);
        const int64_t B = 3;
        Generator g{uint64_t(width * 1000 + dim)};
        Tensor state = rounded(randn({B, width - 1, dim}, g), dtype), xz = rounded(randn({B, 2 * dim}, g), dtype);
        Tensor w = randn({dim, width}, g), bias = randn({dim}, g);
        Tensor gpu_state = state.to(Device::cuda(), dtype);
        Tensor gpu =
            conv1d_update(gpu_state, xz.to(Device::cuda(), dtype), w.to(Device::cuda()), bias.to(Device::cuda()));
        Tensor cpu = conv1d_update(state, xz, w, bias);
        CHECK(test::relative_error(gpu, cpu) < (dtype == DType::bf16 ? 1e-2 : 1e-5));
        CHECK(test::relative_error(gpu_state, state) == 0);
      }
}

TEST_CASE("selective_state_update CUDA matches the CPU reference", "[decode][cuda]") {
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t n_state : {5, 16})
      for (bool optional : {false, true}) {
        INFO(dtype_name(dtype) << " d_state " << n_state << " D and delta_bias " << optional);
        StepInputs s = random_step(3, 130, n_state, 7, uint64_t(n_state * 2 + optional), optional, optional);
        for (Tensor* t : {&s.x, &s.delta, &s.x_dbl, &s.xz}) *t = rounded(*t, dtype);
        auto to_gpu = [&](const Tensor& t, DType d) { return t.defined() ? t.to(Device::cuda(), d) : Tensor(); };
        StateUpdateArgs g{to_gpu(s.state, DType::f32), to_gpu(s.x, dtype), to_gpu(s.delta, dtype),
                          to_gpu(s.A_log, DType::f32), to_gpu(s.x_dbl, dtype), to_gpu(s.D, DType::f32),
                          to_gpu(s.xz, dtype), to_gpu(s.delta_bias, DType::f32)};
        Tensor gpu = selective_state_update(g), cpu = selective_state_update(s.args());
        CHECK(test::relative_error(gpu, cpu) < (dtype == DType::bf16 ? 1e-2 : 1e-5));
        CHECK(test::relative_error(g.state, s.state) < 1e-5);
      }
}

TEST_CASE("append_kv and attention_decode CUDA match the CPU reference (one split and several)", "[decode][cuda]") {
  struct Case {
    int64_t batch, heads, head_dim, capacity, window;
  };
  const Case cases[] = {{3, 2, 64, 37, 0}, {1, 3, 128, 700, 0}, {2, 5, 96, 300, 50}, {1, 1, 64, 2049, 0},
                        {64, 4, 128, 33, 0}};
  for (DType dtype : {DType::f32, DType::bf16})
    for (const Case& c : cases) {
      INFO(dtype_name(dtype) << " batch " << c.batch << " heads " << c.heads << " hd " << c.head_dim << " capacity "
                             << c.capacity << " window " << c.window);
      Generator g{uint64_t(c.capacity + c.head_dim)};
      const Shape cache{c.batch, c.heads, c.capacity, c.head_dim};
      Tensor k = rounded(randn(cache, g), dtype), v = rounded(randn(cache, g), dtype);
      Tensor qkv = rounded(randn({c.batch, 1, 3, c.heads, c.head_dim}, g), dtype);
      std::vector<int32_t> pos(static_cast<size_t>(c.batch));
      for (int64_t b = 0; b < c.batch; ++b)  // row 0 at the cache's end, the others anywhere
        pos[size_t(b)] = int32_t(b == 0 ? c.capacity - 1 : int64_t(g.next_below(uint64_t(c.capacity))));
      Tensor positions = positions_of(pos);
      Tensor gk = k.to(Device::cuda(), dtype), gv = v.to(Device::cuda(), dtype), gq = qkv.to(Device::cuda(), dtype);
      Tensor gpos = positions.to(Device::cuda());
      append_kv(gq, gk, gv, gpos);
      append_kv(qkv, k, v, positions);
      CHECK(test::relative_error(gk, k) == 0);
      CHECK(test::relative_error(gv, v) == 0);
      AttentionOptions o;
      o.window = c.window;
      Tensor gpu = attention_decode(gq, gk, gv, gpos, o), cpu = attention_decode(qkv, k, v, positions, o);
      CHECK(test::relative_error(gpu, cpu) < (dtype == DType::bf16 ? 1e-2 : 1e-5));
      advance_positions(gpos, 2);
      for (auto& p : pos) p += 2;
      CHECK(gpos.to_vector<int32_t>() == pos);
    }
}

TEST_CASE("rope at per-row positions: CUDA matches the CPU reference", "[decode][cuda]") {
  Generator g(9);
  Tensor qkv = randn({3, 1, 3, 4, 64}, g);
  RopeOptions o;
  o.positions = positions_of({0, 17, 2047});
  Tensor cpu = rope(qkv, o);
  o.positions = o.positions.to(Device::cuda());
  CHECK(test::relative_error(rope(qkv.to(Device::cuda()), o), cpu) < 1e-6);
}
