// The CPU kernels on several threads give bitwise what they give on one (kernels/cpu/parallel.h):
// the exact resume of a CPU run and run-to-run reproducibility rest on it. The sizes make every
// kernel cut its work into several blocks.
#include <atomic>
#include <chrono>
#include <functional>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/attention.h"
#include "kernels/conv1d.h"
#include "kernels/cpu/parallel.h"
#include "kernels/elementwise.h"
#include "kernels/matmul.h"
#include "kernels/selective_scan.h"
#include "tests/catch.h"
#include "tests/scan_inputs.h"
#include "tests/util.h"

using namespace coil;
using namespace coil::kernels;
using coil::test::random_normal;

namespace {

// Sets the CPU thread count for a scope.
struct Threads {
  int before = cpu::num_threads();
  explicit Threads(int n) { cpu::set_num_threads(n); }
  ~Threads() { cpu::set_num_threads(before); }
};

// Runs `compute` on 1 thread, then on 2 and 3, and requires identical bits from each.
void require_same_bits_at_any_thread_count(const std::function<std::vector<Tensor>()>& compute) {
  std::vector<Tensor> one;
  {
    Threads t(1);
    one = compute();
  }
  for (int threads : {2, 3}) {
    Threads t(threads);
    std::vector<Tensor> many = compute();
    REQUIRE(many.size() == one.size());
    for (size_t i = 0; i < one.size(); ++i) {
      INFO(threads << " threads, output " << i << ": " << describe(one[i]));
      REQUIRE(test::bitwise_equal(many[i], one[i]));
    }
  }
}

}  // namespace

TEST_CASE("parallel_blocks runs each fixed block once, on several threads, and passes an exception on", "[threads]") {
  Threads t(3);
  const int64_t n = 1000, block = 64, blocks = 16;
  // Filled by the blocks (Catch's assertions are for this thread only).
  std::vector<std::atomic<int>> runs(n);
  std::vector<int64_t> ends(blocks, -1);
  std::vector<std::thread::id> ran_on(blocks);
  cpu::parallel_blocks(n, block, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) ++runs[i];
    ends[begin / block] = end;
    ran_on[begin / block] = std::this_thread::get_id();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // time for the pool's threads to wake
  });
  for (int64_t i = 0; i < n; ++i) {
    INFO("item " << i);
    REQUIRE(runs[i] == 1);
  }
  for (int64_t j = 0; j < blocks; ++j) REQUIRE(ends[j] == std::min(n, (j + 1) * block));
  REQUIRE(std::set<std::thread::id>(ran_on.begin(), ran_on.end()).size() > 1);

  REQUIRE_THROWS_WITH(cpu::parallel_blocks(n, block,
                                           [&](int64_t begin, int64_t) {
                                             if (begin == 5 * block) throw std::runtime_error("block 5 failed");
                                           }),
                      "block 5 failed");
  REQUIRE_THROWS_WITH(cpu::set_num_threads(0), Catch::Matchers::Contains("at least 1, got 0"));

  // A parallel for inside a block runs in order on the block's thread.
  std::vector<std::vector<int64_t>> inner_order(blocks);
  std::vector<int> inner_threads(blocks);
  cpu::parallel_blocks(n, block, [&](int64_t begin, int64_t) {
    std::set<std::thread::id> ids;
    cpu::parallel_blocks(8, 1, [&](int64_t i, int64_t) {
      inner_order[begin / block].push_back(i);
      ids.insert(std::this_thread::get_id());
    });
    inner_threads[begin / block] = int(ids.size());
  });
  for (int64_t j = 0; j < blocks; ++j) {
    REQUIRE(inner_order[j] == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
    REQUIRE(inner_threads[j] == 1);
  }
}

TEST_CASE("element-wise kernels: the same bits on 1, 2 and 3 threads", "[threads]") {
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(dtype_name(dtype));
    Tensor a = random_normal({7, 100003}, 1, dtype), b = random_normal({100003}, 2, dtype);
    Tensor g = random_normal({7, 100003}, 3, dtype);
    require_same_bits_at_any_thread_count([&] {
      return std::vector<Tensor>{div(a, b), mul(a, b), scale(a, 0.3), silu(a), softplus(a),
                                 unary_backward(UnaryOp::gelu, g, a)};
    });
  }
}

TEST_CASE("matmul: the same bits on 1, 2 and 3 threads, every transpose, batched and with bias", "[threads]") {
  for (DType dtype : {DType::f32, DType::f64}) {
    INFO(dtype_name(dtype));
    Tensor a = random_normal({300, 70}, 4, dtype), b = random_normal({70, 90}, 5, dtype);
    Tensor bias = random_normal({90}, 6, dtype);
    Tensor at = random_normal({70, 300}, 7, dtype), bt = random_normal({90, 70}, 8, dtype);
    Tensor a3 = random_normal({3, 130, 70}, 9, dtype), b3 = random_normal({3, 70, 90}, 10, dtype);
    require_same_bits_at_any_thread_count([&] {
      return std::vector<Tensor>{matmul(a, b, false, false, bias), matmul(at, b, true, false), matmul(a, bt, false, true),
                                 matmul(at, bt, true, true, bias), matmul(a3, b3)};
    });
  }
}

TEST_CASE("selective scan: the same bits on 1, 2 and 3 threads, forward and backward", "[threads]") {
  const int64_t nb = 3, nl = 300, nd = 40, nn = 16;
  const DType dtype = DType::f32;
  const ScanArgs a = test::random_scan_args(nb, nl, nd, nn, 11, dtype);
  Generator gen(12);
  Tensor dout = randn({nb, nl, nd}, gen, dtype), dfinal = randn({nb, nd, nn}, gen, dtype);
  require_same_bits_at_any_thread_count([&] {
    ScanResult r = selective_scan_forward(a);
    ScanGrads g = selective_scan_backward(a, r, dout, dfinal);
    return std::vector<Tensor>{r.out, r.final_state, g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.ddelta_bias,
                               g.dinitial_state};
  });
}

TEST_CASE("conv1d: the same bits on 1, 2 and 3 threads, forward and backward", "[threads]") {
  Tensor x = random_normal({3, 300, 64}, 12), w = random_normal({64, 4}, 13), bias = random_normal({64}, 14);
  Tensor dout = random_normal({3, 300, 64}, 15);
  require_same_bits_at_any_thread_count([&] {
    Conv1dGrads g = conv1d_backward(dout, x, w, bias, true);
    return std::vector<Tensor>{conv1d_forward(x, w, bias, true), g.dx, g.dweight, g.dbias};
  });
}

TEST_CASE("attention: the same bits on 1, 2 and 3 threads, forward and backward", "[threads]") {
  for (int64_t window : {int64_t(0), int64_t(17)}) {
    INFO("window " << window);
    AttentionOptions o;
    o.window = window;
    Tensor q = random_normal({2, 128, 3, 16}, 16), k = random_normal({2, 128, 3, 16}, 17);
    Tensor v = random_normal({2, 128, 3, 16}, 18), dout = random_normal({2, 128, 3, 16}, 19);
    require_same_bits_at_any_thread_count([&] {
      AttentionOutput f = attention_forward(q, k, v, o);
      AttentionGrads g = attention_backward(dout, q, k, v, f.out, f.lse, o);
      return std::vector<Tensor>{f.out, f.lse, g.dq, g.dk, g.dv};
    });
  }
}
