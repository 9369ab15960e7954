// The cost of document resets (seq_idx, kernels/documents.h) at 16 x 2048 tokens: each op of a
// Mamba-130M / Transformer++-125M layer with packed documents against the same op without
// them. Three settings per op: no seq_idx; seq_idx with one document per row (the pure
// overhead of reading it); a document start every 500 tokens (rows shifted by 37 b so that the
// edges fall in different tiles). The target (issue 16): at most 5% of the scan's and
// attention's time. Attention with documents also skips the key tiles of earlier documents,
// so it may come out faster. Times: median of CUDA-event timings after warm-up.
// Usage: bench_documents [runs (default 30)]
#include <cuda_bf16.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.cuh"
#include "core/cuda.h"
#include "kernels/attention.h"
#include "kernels/conv1d.h"
#include "kernels/selective_scan.h"

using namespace coil;
using namespace coil::kernels;

namespace {

constexpr int64_t kBatch = 16, kLen = 2048, kEvery = 500;

// (kBatch, kLen) i32 on the GPU: one document per row, or a start every kEvery tokens.
Tensor seq_idx(bool boundaries) {
  std::vector<int32_t> v(size_t(kBatch * kLen));
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t t = 0; t < kLen; ++t) v[size_t(b * kLen + t)] = boundaries ? int32_t((t + 37 * b) / kEvery) : 0;
  return Tensor::from_vector(v, {kBatch, kLen}, DType::i32, Device::cuda(coil::cuda::current_device()));
}

// One op timed in the three settings; f(documents) runs it with seq_idx = documents.
void row(const char* name, int runs, const std::function<void(const Tensor&)>& f) {
  const Tensor one = seq_idx(false), every = seq_idx(true);
  double ms[3];
  const Tensor* settings[] = {nullptr, &one, &every};
  for (int i = 0; i < 3; ++i) {
    try {
      ms[i] = bench::median_ms([&] { f(settings[i] ? *settings[i] : Tensor()); }, runs);
    } catch (const Error& e) {
      std::printf("%-40s %s\n", name, e.what());
      return;
    }
  }
  std::printf("%-40s %9.3f %9.3f %9.3f %+8.1f%% %+8.1f%%\n", name, ms[0], ms[1], ms[2], 100 * (ms[1] / ms[0] - 1),
              100 * (ms[2] / ms[0] - 1));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const int runs = argc > 1 ? std::atoi(argv[1]) : 30;
  if (!cuda_available()) {
    std::printf("bench_documents: no GPU (%s)\n", cuda_unavailable_reason().c_str());
    return 0;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, coil::cuda::current_device());
  std::printf("device: %s; %lld x %lld tokens, a document start every %lld tokens; median of %d\n", prop.name,
              (long long)kBatch, (long long)kLen, (long long)kEvery, runs);
  std::printf("%-40s %9s %9s %9s %9s %9s\n", "op (ms)", "none", "1 doc", "every500", "1 doc", "every500");

  // Mamba-130M: d_inner 1536, d_state 16, d_conv 4, bf16 activations.
  const int64_t Dn = 1536, N = 16, K = 4;
  Tensor x = bench::random_uniform({kBatch, kLen, Dn}, DType::bf16, -1.f, 1.f, 1);
  Tensor go = bench::random_uniform({kBatch, kLen, Dn}, DType::bf16, -1.f, 1.f, 2);
  Tensor w = bench::random_uniform({Dn, K}, DType::f32, -0.5f, 0.5f, 3);
  Tensor cb = bench::random_uniform({Dn}, DType::f32, -0.5f, 0.5f, 4);
  auto conv_options = [](const Tensor& s) {
    Conv1dOptions o;
    o.seq_idx = s;
    return o;
  };
  row("conv1d forward (D 1536, width 4)", runs, [&](const Tensor& s) { conv1d_forward(x, w, cb, true, conv_options(s)); });
  row("conv1d backward", runs, [&](const Tensor& s) { conv1d_backward(go, x, w, cb, true, conv_options(s)); });

  ScanArgs a;
  a.u = x;
  a.delta = bench::random_uniform({kBatch, kLen, Dn}, DType::bf16, -3.f, 0.5f, 5);
  a.A = bench::random_uniform({Dn, N}, DType::f32, -4.f, -0.2f, 6);
  a.B = bench::random_uniform({kBatch, kLen, N}, DType::bf16, -1.f, 1.f, 7);
  a.C = bench::random_uniform({kBatch, kLen, N}, DType::bf16, -1.f, 1.f, 8);
  a.D = bench::random_uniform({Dn}, DType::f32, -1.f, 1.f, 9);
  a.z = bench::random_uniform({kBatch, kLen, Dn}, DType::bf16, -1.f, 1.f, 10);
  a.delta_bias = bench::random_uniform({Dn}, DType::f32, -1.f, 0.5f, 11);
  a.delta_softplus = true;
  auto scan_with = [&](const Tensor& s) {
    ScanArgs b = a;
    b.seq_idx = s;
    return b;
  };
  row("selective scan forward (N 16)", runs, [&](const Tensor& s) { selective_scan_forward(scan_with(s)); });
  row("selective scan forward + backward", runs, [&](const Tensor& s) {
    ScanArgs b = scan_with(s);
    ScanResult r = selective_scan_forward(b);
    selective_scan_backward(b, r, go, Tensor(), false);
  });

  // Transformer++-125M attention: 12 heads of 64.
  const Shape qs{kBatch, kLen, 12, 64};
  Tensor q = bench::random_uniform(qs, DType::bf16, -1.f, 1.f, 12), k = bench::random_uniform(qs, DType::bf16, -1.f, 1.f, 13),
         v = bench::random_uniform(qs, DType::bf16, -1.f, 1.f, 14), g = bench::random_uniform(qs, DType::bf16, -1.f, 1.f, 15);
  auto attention_options = [](const Tensor& s) {
    AttentionOptions o;
    o.seq_idx = s;
    return o;
  };
  row("attention forward (H 12, hd 64)", runs, [&](const Tensor& s) { attention_forward(q, k, v, attention_options(s)); });
  row("attention forward + backward", runs, [&](const Tensor& s) {
    AttentionOptions o = attention_options(s);
    AttentionOutput f = attention_forward(q, k, v, o);
    attention_backward(g, q, k, v, f.out, f.lse, o);
  });
  return 0;
}
