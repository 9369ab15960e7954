// The autograd engine, exercised through the element-wise, reduce, matmul and layout ops.
#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "autograd/functions/matmul.h"
#include "autograd/functions/reduce.h"
#include "kernels/accumulate.h"
#include "kernels/matmul.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
namespace ag = coil::autograd;
using Catch::Matchers::Contains;

namespace {

ag::Variable leaf(std::vector<double> values) {
  int64_t n = int64_t(values.size());
  return ag::Variable(Tensor::from_vector<double>(values, {n}, DType::f64), true);
}

std::vector<double> grad_of(const ag::Variable& v) { return v.grad().to_vector<double>(); }

}  // namespace

TEST_CASE("engine: a diamond graph sums both paths", "[engine]") {
  ag::Variable x = leaf({0.5, -1.0, 2.0});
  ag::Variable a = ag::exp(x);
  ag::Variable b = ag::scale(a, 2.0);  // path 1
  ag::Variable c = ag::mul(a, a);      // path 2 (a used twice)
  ag::sum_all(ag::add(b, c)).backward();
  std::vector<double> g = grad_of(x), xv = x.value().to_vector<double>();
  for (size_t i = 0; i < 3; ++i) REQUIRE(g[i] == Approx(2 * std::exp(xv[i]) + 2 * std::exp(2 * xv[i])));
}

TEST_CASE("engine: a tensor used several times, and a shared parameter", "[engine]") {
  ag::Variable x = leaf({1.0, 2.0, -3.0});
  ag::sum_all(ag::add(ag::mul(x, x), ag::add(x, x))).backward();  // d/dx (x^2 + 2x) = 2x + 2
  REQUIRE(grad_of(x) == std::vector<double>{4.0, 6.0, -4.0});

  // One weight in two products: its gradient is the sum of both uses.
  ag::Variable w(Tensor::from_vector<double>({1, 2, 3, 4}, {2, 2}, DType::f64), true);
  ag::Variable u(Tensor::from_vector<double>({1, 0}, {1, 2}, DType::f64));
  ag::Variable v(Tensor::from_vector<double>({0, 1}, {1, 2}, DType::f64));
  ag::Variable loss = ag::add(ag::sum_all(ag::linear(u, w)), ag::sum_all(ag::linear(v, w)));
  loss.backward();
  // d/dW sum(x W^T) = ones^T x for each x: rows of dW are u + v = [1, 1].
  REQUIRE(grad_of(w) == std::vector<double>{1, 1, 1, 1});
  REQUIRE_FALSE(u.grad().defined());
}

TEST_CASE("engine: no-grad scope records nothing", "[engine]") {
  ag::Variable x = leaf({1.0});
  {
    ag::NoGradGuard guard;
    REQUIRE_FALSE(ag::grad_mode_enabled());
    ag::Variable y = ag::exp(x);
    REQUIRE_FALSE(y.requires_grad());
    REQUIRE(y.grad_fn() == nullptr);
    {
      ag::NoGradGuard nested;
    }
    REQUIRE_FALSE(ag::grad_mode_enabled());  // the nested guard restores "off"
    REQUIRE_THROWS_WITH(y.backward(), Contains("does not require grad"));
  }
  REQUIRE(ag::grad_mode_enabled());
  ag::Variable z = ag::exp(x);
  REQUIRE(z.requires_grad());
  REQUIRE(z.grad_fn() != nullptr);
  REQUIRE(z.grad_fn()->name == "exp");
  REQUIRE_FALSE(ag::exp(x.detach()).requires_grad());
}

TEST_CASE("engine: retain_graph allows a second backward, which accumulates", "[engine]") {
  ag::Variable x = leaf({1.0, 2.0});
  ag::Variable y = ag::sum_all(ag::mul(x, x));
  y.backward(Tensor(), true);
  REQUIRE(grad_of(x) == std::vector<double>{2.0, 4.0});
  y.backward(Tensor(), true);
  REQUIRE(grad_of(x) == std::vector<double>{4.0, 8.0});
  y.backward();  // the last one may free the graph
  REQUIRE(grad_of(x) == std::vector<double>{6.0, 8.0 + 4.0});
  REQUIRE_THROWS_WITH(y.backward(), Contains("a second time") && Contains("retain_graph=true"));
}

TEST_CASE("engine: backward twice without retain_graph is an error", "[engine][errors]") {
  ag::Variable x = leaf({1.0, 2.0});
  ag::Variable y = ag::sum_all(ag::exp(x));
  y.backward();
  REQUIRE_THROWS_WITH(y.backward(), Contains("backward through 'sum_all' a second time"));
}

TEST_CASE("engine: an in-place write to a tensor an op saved is an error at backward", "[engine][errors]") {
  // exp saves its input; the input is then overwritten in place: backward would use the new
  // values, so it refuses, naming the op and the tensor.
  ag::Variable x = leaf({0.5, -1.0, 2.0});
  ag::Variable loss = ag::sum_all(ag::exp(x));
  Tensor(x.value()).fill_(3.0);
  REQUIRE_THROWS_WITH(loss.backward(), Contains("backward through 'exp': its input 0 was modified in place") &&
                                           Contains("when 'exp' ran") && Contains("clone()"));
  // The same through a view of the saved buffer (the version belongs to the buffer).
  ag::Variable a = leaf({1.0, 2.0}), b = leaf({3.0, 4.0});
  ag::Variable z = ag::sum_all(ag::mul(a, b));
  a.value().reshape({2, 1}).copy_(Tensor::from_vector<double>({5.0, 6.0}, {2, 1}, DType::f64));
  REQUIRE_THROWS_WITH(z.backward(), Contains("backward through 'mul': its input 0 was modified in place"));
  // A write before the op, and one into a copy, leave the graph intact.
  ag::Variable u = leaf({0.5, 1.0});
  Tensor(u.value()).fill_(0.25);
  ag::Variable w = ag::exp(u);
  ag::Variable total = ag::sum_all(w);
  w.value().clone().fill_(9.0);
  total.backward();
  REQUIRE(grad_of(u) == std::vector<double>{std::exp(0.25), std::exp(0.25)});
}

TEST_CASE("engine: a non-scalar needs an explicit gradient of its shape", "[engine][errors]") {
  ag::Variable x = leaf({1.0, 2.0, 3.0});
  ag::Variable y = ag::scale(x, 3.0);
  REQUIRE_THROWS_WITH(y.backward(), Contains("backward: f64[3] cpu is not a scalar"));
  REQUIRE_THROWS_WITH(y.backward(Tensor::ones({2}, DType::f64)), Contains("f64[2] cpu"));
  y.backward(Tensor::from_vector<double>({1, 0, 2}, {3}, DType::f64));
  REQUIRE(grad_of(x) == std::vector<double>{3.0, 0.0, 6.0});
}

TEST_CASE("engine: saved tensors are released after backward unless retained", "[engine]") {
  ag::Variable x = leaf({0.1, 0.2, 0.3});
  for (bool retain : {false, true}) {
    std::weak_ptr<Storage> saved;
    ag::Variable y;
    {
      ag::Variable a = ag::exp(x);  // a's value is saved by mul below
      saved = a.value().storage();
      y = ag::sum_all(ag::mul(a, a));
    }
    REQUIRE_FALSE(saved.expired());  // held by the graph only
    y.backward(Tensor(), retain);
    REQUIRE(saved.expired() == !retain);
  }
}

TEST_CASE("engine: gradient hooks fire once per accumulation", "[engine]") {
  ag::Variable x = leaf({1.0, 2.0});
  int calls = 0;
  std::vector<double> seen;
  x.add_grad_ready_hook([&] {
    ++calls;
    seen = x.grad().to_vector<double>();
  });
  ag::sum_all(ag::add(x, ag::mul(x, x))).backward();  // x used twice, one accumulation
  REQUIRE(calls == 1);
  REQUIRE(seen == std::vector<double>{3.0, 5.0});
  ag::sum_all(x).backward();
  REQUIRE(calls == 2);
  REQUIRE(seen == std::vector<double>{4.0, 6.0});
}

TEST_CASE("engine: a bound gradient buffer is accumulated in place", "[engine]") {
  ag::Variable x = leaf({1.0, 2.0});
  Tensor flat = Tensor::zeros({3}, DType::f64);
  Tensor view = flat.view_bytes(sizeof(double), {2}, DType::f64);
  x.set_grad(view);
  ag::sum_all(ag::scale(x, 2.0)).backward();
  ag::sum_all(x).backward();
  REQUIRE(flat.to_vector<double>() == std::vector<double>{0.0, 3.0, 3.0});
  x.zero_grad();
  REQUIRE(flat.to_vector<double>() == std::vector<double>{0.0, 0.0, 0.0});
  REQUIRE(x.grad().same_buffer(flat));
}

TEST_CASE("engine: multi-output nodes, unused outputs get zeros", "[engine]") {
  ag::Variable x(Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}, DType::f64), true);
  std::vector<ag::Variable> parts = ag::split(x, {1, 1, 1}, 1);
  REQUIRE(parts[0].grad_fn() == parts[2].grad_fn());
  REQUIRE(parts[2].output_nr() == 2);
  ag::sum_all(ag::add(ag::scale(parts[0], 10.0), parts[2])).backward();
  REQUIRE(grad_of(x) == std::vector<double>{10, 0, 1, 10, 0, 1});
}

TEST_CASE("engine: inputs that need no gradient get none", "[engine]") {
  ag::Variable x = leaf({1.0, 2.0});
  ag::Variable c(Tensor::from_vector<double>({3.0, 4.0}, {2}, DType::f64));
  REQUIRE_FALSE(ag::add(c, c).requires_grad());
  ag::sum_all(ag::div(x, c)).backward();
  REQUIRE_FALSE(c.grad().defined());
  REQUIRE(grad_of(x)[0] == Approx(1.0 / 3));
  REQUIRE_THROWS_WITH(ag::Variable(Tensor::zeros({2}, DType::i64), true), Contains("not a floating tensor"));
}

namespace {

// An op on x whose backward hands back `grad`, whatever flows in (a gradient the test may
// also hold, like a node that passes its incoming gradient on).
ag::Variable with_grad(const ag::Variable& x, Tensor grad) {
  return ag::record_fn("with_grad", {x}, x.value().clone(), [grad](const ag::Grads&) { return ag::Grads{grad}; });
}

Tensor f64s(std::vector<double> v) { return Tensor::from_vector<double>(v, {int64_t(v.size())}, DType::f64); }

}  // namespace

TEST_CASE("engine: sums in place only into gradients no other tensor holds", "[engine]") {
  // Three uses of x: the engine sums their gradients in x's slot. `kept` is held by the test
  // throughout (it must not change); the others are fresh (the engine may add into them).
  // Nodes run newest first, so each order puts a kept gradient first, last, or between.
  Tensor kept = f64s({1.0, 2.0});
  const std::vector<double> kept_before = kept.to_vector<double>();
  for (int kept_at = 0; kept_at < 3; ++kept_at) {
    ag::Variable x = leaf({0.0, 0.0});
    ag::Variable sum;
    for (int i = 0; i < 3; ++i) {
      ag::Variable use = with_grad(x, i == kept_at ? kept : f64s({10.0 * (i + 1), 100.0 * (i + 1)}));
      sum = sum.defined() ? ag::add(sum, ag::sum_all(use)) : ag::sum_all(use);
    }
    sum.backward();
    std::vector<double> expect{1.0, 2.0};
    for (int i = 0; i < 3; ++i)
      if (i != kept_at) expect[0] += 10.0 * (i + 1), expect[1] += 100.0 * (i + 1);
    REQUIRE(grad_of(x) == expect);
    REQUIRE(kept.to_vector<double>() == kept_before);
    REQUIRE_FALSE(x.grad().same_buffer(kept));
  }
  // Two kept gradients: their sum goes to a fresh tensor.
  Tensor other = f64s({5.0, 7.0});
  ag::Variable x = leaf({0.0, 0.0});
  ag::add(ag::sum_all(with_grad(x, kept)), ag::sum_all(with_grad(x, other))).backward();
  REQUIRE(grad_of(x) == std::vector<double>{6.0, 9.0});
  REQUIRE(kept.to_vector<double>() == kept_before);
  REQUIRE(other.to_vector<double>() == std::vector<double>{5.0, 7.0});
}

TEST_CASE("engine: a leaf takes over a gradient no other tensor holds, and copies a held one", "[engine]") {
  Tensor kept = f64s({3.0, 4.0});
  ag::Variable x = leaf({0.0, 0.0});
  ag::sum_all(with_grad(x, kept)).backward();
  REQUIRE(grad_of(x) == std::vector<double>{3.0, 4.0});
  REQUIRE_FALSE(x.grad().same_buffer(kept));
  ag::sum_all(x).backward();  // accumulates into the leaf's own copy
  REQUIRE(kept.to_vector<double>() == std::vector<double>{3.0, 4.0});

  ag::Variable y = leaf({0.0, 0.0});
  const void* fresh = nullptr;
  ag::Variable use = ag::record_fn("fresh_grad", {y}, y.value().clone(), [&fresh](const ag::Grads&) {
    Tensor g = f64s({5.0, 6.0});
    fresh = g.raw();
    return ag::Grads{g};
  });
  ag::sum_all(use).backward();
  REQUIRE(grad_of(y) == std::vector<double>{5.0, 6.0});
  REQUIRE(y.grad().raw() == fresh);  // taken over, not copied
}

TEST_CASE("engine: a linear adds its input's gradient into the sum the engine holds", "[engine]") {
  // x feeds a linear (recorded first, so it runs last) and a fresh-gradient op: when the linear
  // runs, x's slot holds the other gradient alone, and the linear's product adds into it.
  Tensor xv = test::random_normal({4, 3}, 1), wv = test::random_normal({5, 3}, 2);
  Tensor other = test::random_normal({4, 3}, 3), gy = test::random_normal({4, 5}, 4);
  const void* fresh = nullptr;
  auto fresh_grad = [&](const ag::Variable& x) {
    return ag::record_fn("fresh_grad", {x}, x.value().clone(), [&fresh, other](const ag::Grads&) {
      Tensor g = other.clone();
      fresh = g.raw();
      return ag::Grads{g};
    });
  };
  ag::Variable x(xv.clone(), true), w(wv.clone(), true);
  ag::Variable y = ag::linear(x, w);
  ag::Variable z = fresh_grad(x);
  ag::add(ag::sum_all(ag::mul(y, ag::Variable(gy))), ag::sum_all(z)).backward();
  // The same bits as the two gradients computed apart and added.
  ag::Variable x_alone(xv.clone(), true);
  ag::linear(x_alone, ag::Variable(wv.clone())).backward(gy);
  Tensor expect = other.clone();
  kernels::accumulate(expect, x_alone.grad());
  REQUIRE(test::bitwise_equal(x.grad(), expect));
  REQUIRE(x.grad().raw() == fresh);  // summed where the other gradient was, then taken over
  REQUIRE(test::relative_error(w.grad(), kernels::matmul(gy, xv, true, false)) <= 1e-6);
}
