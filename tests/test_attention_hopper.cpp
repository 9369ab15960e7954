// The Hopper attention kernels (kernels/cuda/attention_hopper.cu, the forward, and
// kernels/cuda/attention_hopper_backward.cu, dK/dV and dQ: wgmma, TMA) against the CPU reference
// and against the portable CUDA kernels (kernels/cuda/attention.cu), each forced through
// set_attention_forward_kernel / set_attention_backward_kernel: awkward lengths, head dims 64,
// 96 (zero-padded to 128 columns) and 128, causal and windowed, packed qkv, documents; the
// Hopper backward twice bit-identical; the automatic choice takes them at hd 96.
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/layout.h"
#include "tests/catch.h"
#include "tests/util.h"

using namespace coil;
using kernels::AttentionGrads;
using kernels::AttentionKernel;
using kernels::AttentionOptions;
using kernels::AttentionOutput;
using test::grad_error;
using test::random_normal;
using test::relative_error;

namespace {

// Restores both kernel settings when a test ends, however it ends.
struct KernelScope {
  AttentionKernel forward = kernels::attention_forward_kernel(), backward = kernels::attention_backward_kernel();
  ~KernelScope() {
    kernels::set_attention_forward_kernel(forward);
    kernels::set_attention_backward_kernel(backward);
  }
};

// Whether this GPU runs the Hopper kernels. On a GPU other than sm_90 they cannot (a warning
// says so); on an sm_90 GPU they must, so a build without sm_90a code fails here.
bool hopper_available() {
  const std::string why = kernels::attention_hopper_unsupported(64);
  if (why.find("not sm_90") != std::string::npos) {
    WARN("the Hopper attention kernels are not tested: " << why);
    return false;
  }
  INFO(why);
  REQUIRE(why.empty());
  return true;
}

// seq_idx (B, T) i32: documents whose lengths cycle through `lengths`, row b starting b
// entries further into the cycle.
Tensor cycling_documents(int64_t B, int64_t T, const std::vector<int64_t>& lengths) {
  std::vector<int32_t> idx(size_t(B * T));
  for (int64_t b = 0; b < B; ++b) {
    int32_t doc = 0;
    size_t next = size_t(b) % lengths.size();
    int64_t left = lengths[next];
    for (int64_t t = 0; t < T; ++t) {
      if (left == 0) {
        ++doc;
        next = (next + 1) % lengths.size();
        left = lengths[next];
      }
      idx[size_t(b * T + t)] = doc;
      --left;
    }
  }
  return Tensor::from_vector(idx, {B, T}, DType::i32);
}

struct HopperCase {
  int64_t B, T, H, hd, window;
  bool packed = false;  // packed qkv (B, T, 3, H, hd)
  std::vector<int64_t> documents = {};  // document lengths (cycled); empty: none
};

Tensor packed_qkv(const HopperCase& c, const Tensor& q, const Tensor& k, const Tensor& v) {
  const Shape s1{c.B, c.T, 1, c.H, c.hd};
  return kernels::concat({q.reshape(s1), k.reshape(s1), v.reshape(s1)}, 2);
}

AttentionOutput forward_on_gpu(AttentionKernel kernel, const HopperCase& c, const Tensor& q, const Tensor& k,
                               const Tensor& v, const AttentionOptions& o) {
  kernels::set_attention_forward_kernel(kernel);
  if (!c.packed) return kernels::attention_forward(q, k, v, o);
  return kernels::attention_forward_packed(packed_qkv(c, q, k, v), o);
}

// dq, dk, dv (each (B, T, H, hd)) of the backward `kernel` from the forward's out and lse; a
// packed case takes the packed entry point and splits its dqkv.
AttentionGrads backward_on_gpu(AttentionKernel kernel, const HopperCase& c, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& g, const AttentionOutput& f, const AttentionOptions& o) {
  kernels::set_attention_backward_kernel(kernel);
  if (!c.packed) return kernels::attention_backward(g, q, k, v, f.out, f.lse, o);
  const Tensor d = kernels::attention_backward_packed(g, packed_qkv(c, q, k, v), f.out, f.lse, o);
  const Shape s{c.B, c.T, c.H, c.hd};
  return {kernels::narrow(d, 2, 0, 1).reshape(s), kernels::narrow(d, 2, 1, 1).reshape(s),
          kernels::narrow(d, 2, 2, 1).reshape(s)};
}

// Forward and backward of the Hopper kernels against the CPU reference (f32, from the same
// bf16 inputs) and the portable kernels; the Hopper backward run twice must agree to the bit.
void compare_hopper(const HopperCase& c, uint64_t seed) {
  INFO("B " << c.B << " T " << c.T << " H " << c.H << " hd " << c.hd << " window " << c.window
            << (c.packed ? " packed" : " separate") << (c.documents.empty() ? "" : " documents"));
  const Shape s{c.B, c.T, c.H, c.hd};
  const Device gpu = Device::cuda(), cpu = Device::cpu();
  Tensor q = random_normal(s, seed, DType::bf16, gpu, 1.3), k = random_normal(s, seed + 1, DType::bf16, gpu, 1.3),
         v = random_normal(s, seed + 2, DType::bf16, gpu), g = random_normal(s, seed + 3, DType::bf16, gpu);
  AttentionOptions o;
  o.window = c.window;
  if (!c.documents.empty()) o.seq_idx = cycling_documents(c.B, c.T, c.documents);
  const Tensor qc = q.to(cpu, DType::f32), kc = k.to(cpu, DType::f32), vc = v.to(cpu, DType::f32),
               gc = g.to(cpu, DType::f32);
  const AttentionOutput ref = kernels::attention_forward(qc, kc, vc, o);
  const AttentionGrads ref_grads = kernels::attention_backward(gc, qc, kc, vc, ref.out, ref.lse, o);
  AttentionOptions od = o;
  if (o.seq_idx.defined()) od.seq_idx = o.seq_idx.to(gpu);

  AttentionOutput hopper = forward_on_gpu(AttentionKernel::hopper, c, q, k, v, od);
  AttentionOutput portable = forward_on_gpu(AttentionKernel::portable, c, q, k, v, od);
  REQUIRE(hopper.out.shape() == ref.out.shape());
  REQUIRE(hopper.out.dtype() == DType::bf16);
  const double tol = 1.5e-2;  // bf16 products and a bf16 output
  CHECK(relative_error(hopper.out, ref.out) < tol);
  CHECK(relative_error(hopper.lse, ref.lse) < 1e-3);
  CHECK(relative_error(hopper.out, portable.out) < tol);
  CHECK(relative_error(hopper.lse, portable.lse) < 1e-3);
  CHECK(relative_error(portable.out, ref.out) < tol);

  // Both backwards from the portable forward's out and lse, so that they differ only in the
  // backward kernels.
  const AttentionGrads hb = backward_on_gpu(AttentionKernel::hopper, c, q, k, v, g, portable, od);
  const AttentionGrads hb2 = backward_on_gpu(AttentionKernel::hopper, c, q, k, v, g, portable, od);
  const AttentionGrads pb = backward_on_gpu(AttentionKernel::portable, c, q, k, v, g, portable, od);
  REQUIRE(hb.dq.dtype() == DType::bf16);
  CHECK(grad_error(hb.dq, ref_grads.dq, ref_grads.dv) < 2 * tol);
  CHECK(grad_error(hb.dk, ref_grads.dk, ref_grads.dv) < 2 * tol);
  CHECK(relative_error(hb.dv, ref_grads.dv) < 2 * tol);
  CHECK(grad_error(hb.dq, pb.dq, pb.dv) < 2 * tol);
  CHECK(grad_error(hb.dk, pb.dk, pb.dv) < 2 * tol);
  CHECK(relative_error(hb.dv, pb.dv) < 2 * tol);
  CHECK(test::bitwise_equal(hb.dq, hb2.dq));
  CHECK(test::bitwise_equal(hb.dk, hb2.dk));
  CHECK(test::bitwise_equal(hb.dv, hb2.dv));
}

}  // namespace

TEST_CASE("attention CUDA Hopper kernels match the CPU reference and the portable kernels", "[attention][cuda]") {
  KernelScope scope;
  if (!hopper_available()) return;
  uint64_t seed = 5000;
  for (int64_t hd : {64, 96, 128})
    for (int64_t T : {1, 7, 65, 1000, 4097})
      for (int64_t window : {int64_t(0), T / 3 + 1}) {
        const int64_t B = T > 1000 ? 1 : 2, H = T > 1000 ? 1 : 3;
        compare_hopper({B, T, H, hd, window, T % 2 == 0}, seed += 10);
      }
}

TEST_CASE("attention CUDA Hopper kernels: packed qkv, documents, windows at tile edges", "[attention][cuda]") {
  KernelScope scope;
  if (!hopper_available()) return;
  // Document lengths put starts at and beside the 64/128-row tile edges; length-1 documents
  // leave rows that see only themselves.
  const std::vector<int64_t> edges = {1, 63, 64, 65, 127, 129, 300, 5, 128};
  const HopperCase cases[] = {
      {2, 1000, 2, 64, 0, true},        {1, 333, 3, 128, 50, true},        {2, 1000, 2, 64, 0, false, edges},
      {1, 4097, 1, 128, 300, false, edges}, {2, 65, 2, 128, 7, true, edges}, {1, 7, 2, 64, 0, false, {1}},
      {1, 700, 2, 128, 0, true, {500}}, {2, 257, 2, 64, 128, false},     {1, 256, 2, 128, 1, false},
      {1, 2048, 2, 64, 129, true, {1000, 24}}, {1, 1000, 2, 64, 64, true, edges},
      {1, 1000, 2, 96, 0, true, edges}, {2, 257, 3, 96, 128, true}, {1, 700, 2, 96, 50, false, {500}}};
  uint64_t seed = 6000;
  for (const HopperCase& c : cases) compare_hopper(c, seed += 10);
}

TEST_CASE("attention CUDA Hopper kernels: the automatic choice takes them at hd 96", "[attention][cuda]") {
  KernelScope scope;
  if (!hopper_available()) return;
  // Every head dim the CUDA kernels take (kernels::attention_cuda_head_dims) runs on Hopper, so a
  // forced Hopper kernel cannot meet a head dim it lacks through the attention entry points
  // (they reject other head dims first); the reason names the head dim all the same.
  for (int64_t hd : {64, 96, 128}) CHECK(kernels::attention_hopper_unsupported(hd).empty());
  CHECK_THAT(kernels::attention_hopper_unsupported(80), Catch::Matchers::Contains("head dim 80"));
  // Both directions deterministic: the automatic choice at hd 96 gives the forced Hopper
  // kernels' bits. The portable forward sums in another order, so its bits differ: that shows
  // which forward ran. The backwards may agree bit for bit (on an H200 this case's dQ did: both
  // sum the same tiles in the same order), so only the Hopper bits are required there.
  const HopperCase c{2, 300, 2, 96, 0};
  const Shape s{c.B, c.T, c.H, c.hd};
  const Tensor q = random_normal(s, 7000, DType::bf16, Device::cuda(), 1.3),
               k = random_normal(s, 7001, DType::bf16, Device::cuda(), 1.3),
               v = random_normal(s, 7002, DType::bf16, Device::cuda()),
               g = random_normal(s, 7003, DType::bf16, Device::cuda());
  const AttentionOutput automatic = forward_on_gpu(AttentionKernel::automatic, c, q, k, v, {});
  const AttentionOutput hopper = forward_on_gpu(AttentionKernel::hopper, c, q, k, v, {});
  const AttentionOutput portable = forward_on_gpu(AttentionKernel::portable, c, q, k, v, {});
  CHECK(test::bitwise_equal(automatic.out, hopper.out));
  CHECK_FALSE(test::bitwise_equal(automatic.out, portable.out));
  const AttentionGrads automatic_grads = backward_on_gpu(AttentionKernel::automatic, c, q, k, v, g, hopper, {});
  const AttentionGrads hopper_grads = backward_on_gpu(AttentionKernel::hopper, c, q, k, v, g, hopper, {});
  CHECK(test::bitwise_equal(automatic_grads.dq, hopper_grads.dq));
  CHECK(test::bitwise_equal(automatic_grads.dk, hopper_grads.dk));
  CHECK(test::bitwise_equal(automatic_grads.dv, hopper_grads.dv));
}
