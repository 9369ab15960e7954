// Selective scan benchmark (not a test): forward, backward and forward+backward times of the
// fused kernels (CUDA events, warm-up, median of many runs) and their time per token, achieved
// bandwidth against a measured device-to-device copy, bytes saved for backward per token, and
// a naive two-kernel scan that writes every state (B, D, L, N) to memory, to show what the
// fusion saves. Shapes: Mamba-130M's scan at 16 x 2048, 4 x 8192 and 1 x 65536 (d_inner 2048
// for the last), and B8 D2048 L4096.
// Usage: bench_scan [runs] [--waves W,W,...]   (--waves: the time segments' trade, ScanWaves,
// at Mamba-130M's three shapes only). The backward lines time both backward main kernels
// (ScanBackward: one and pairs) one after the other.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.cuh"
#include "core/cuda.h"
#include "kernels/conv1d.h"
#include "kernels/selective_scan.h"

using namespace coil;
using namespace coil::kernels;

namespace {

Tensor rand_tensor(const Shape& s, DType dt, float lo, float hi, uint32_t seed) {
  return bench::random_uniform(s, dt, lo, hi, seed);
}

// Naive scan, kernel 1: one thread per (b, d, n) runs the recurrence and writes every state
// h[b][t][d][n] (fp32) to global memory. Channel-last inputs: u[b][t][d], B[b][t][n].
template <class T>
__global__ void naive_states(const T* u, const T* delta, const float* A, const T* B, const float* bias, float* hs,
                             int64_t total_bd, int dim, int len, int N) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int n = int(i % N);
  const int64_t bd = i / N;
  if (bd >= total_bd) return;
  const int d = int(bd % dim), b = int(bd / dim);
  const float a = A[d * N + n];
  float h = 0.f;
  for (int t = 0; t < len; ++t) {
    const int64_t bt = int64_t(b) * len + t, e = bt * dim + d;
    float x = float(delta[e]) + bias[d];
    float dt = x > 20.f ? x : log1pf(__expf(x));
    h = __expf(dt * a) * h + dt * float(B[bt * N + n]) * float(u[e]);
    hs[e * N + n] = h;
  }
}

// Naive scan, kernel 2: one thread per (b, t, d) reads the N states back for the readout.
template <class T>
__global__ void naive_readout(const T* u, const T* z, const T* C, const float* D, const float* hs, T* out, int64_t total,
                              int dim, int N) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t bt = i / dim;
  const int d = int(i % dim);
  float y = 0.f;
  for (int n = 0; n < N; ++n) y += float(C[bt * N + n]) * hs[i * N + n];
  y += D[d] * float(u[i]);
  const float zv = float(z[i]);
  out[i] = T(y * zv / (1.f + __expf(-zv)));
}

// The copy that a channel-first scan needs around it: out[b][c][r] = in[b][r][c] (bf16).
__global__ void transpose_kernel(const __nv_bfloat16* in, __nv_bfloat16* out, int rows, int cols) {
  __shared__ __nv_bfloat16 tile[32][33];
  const int64_t b = blockIdx.z;
  const int r0 = blockIdx.y * 32, c0 = blockIdx.x * 32;
  in += b * rows * int64_t(cols);
  out += b * rows * int64_t(cols);
  for (int i = threadIdx.y; i < 32; i += blockDim.y)
    if (r0 + i < rows && c0 + int(threadIdx.x) < cols) tile[i][threadIdx.x] = in[int64_t(r0 + i) * cols + c0 + threadIdx.x];
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y)
    if (c0 + i < cols && r0 + int(threadIdx.x) < rows) out[int64_t(c0 + i) * rows + r0 + threadIdx.x] = tile[threadIdx.x][i];
}

using bench::median_ms;

// Mamba's scan inputs at (batch, length, dim, state), bf16: softplus, delta bias, z, D.
ScanArgs random_args(int64_t Bn, int64_t Dn, int64_t Ln, int64_t Nn) {
  const DType dt = DType::bf16;
  ScanArgs a;
  a.u = rand_tensor({Bn, Ln, Dn}, dt, -1.f, 1.f, 1);
  a.delta = rand_tensor({Bn, Ln, Dn}, dt, -4.f, -1.f, 2);
  a.z = rand_tensor({Bn, Ln, Dn}, dt, -1.f, 1.f, 3);
  a.B = rand_tensor({Bn, Ln, Nn}, dt, -1.f, 1.f, 4);
  a.C = rand_tensor({Bn, Ln, Nn}, dt, -1.f, 1.f, 5);
  a.A = rand_tensor({Dn, Nn}, DType::f32, -8.f, -0.5f, 6);
  a.D = rand_tensor({Dn}, DType::f32, 0.5f, 1.5f, 7);
  a.delta_bias = rand_tensor({Dn}, DType::f32, -2.f, 0.f, 8);
  a.delta_softplus = true;
  return a;
}

// Forward, backward and forward + backward times for each number of waves the segments aim
// for (the same forward and backward, scan_waves()).
void run_waves(int64_t Bn, int64_t Dn, int64_t Ln, int64_t Nn, int runs, const std::vector<float>& waves) {
  const ScanArgs a = random_args(Bn, Dn, Ln, Nn);
  const Tensor gout = rand_tensor({Bn, Ln, Dn}, DType::bf16, -1.f, 1.f, 9);
  std::printf("shape B%lld D%lld L%lld N%lld bf16: waves, forward, backward, forward + backward (ms)\n", (long long)Bn,
              (long long)Dn, (long long)Ln, (long long)Nn);
  const ScanWaves before = scan_waves();
  for (float w : waves) {
    set_scan_waves({w, w});
    const ScanResult r = selective_scan_forward(a, true);
    const float f_ms = median_ms([&] { selective_scan_forward(a, true); }, runs);
    const float b_ms = median_ms([&] { selective_scan_backward(a, r, gout, Tensor(), false); }, runs);
    const float fb_ms = median_ms(
        [&] { selective_scan_backward(a, selective_scan_forward(a, true), gout, Tensor(), false); }, runs);
    std::printf("  waves %5.2f  %8.3f  %8.3f  %8.3f\n", w, f_ms, b_ms, fb_ms);
  }
  set_scan_waves(before);
}

void run_shape(int64_t Bn, int64_t Dn, int64_t Ln, int64_t Nn, int runs, double copy_gbs) {
  const DType dt = DType::bf16;
  const ScanArgs a = random_args(Bn, Dn, Ln, Nn);
  Tensor gout = rand_tensor({Bn, Ln, Dn}, dt, -1.f, 1.f, 9);
  coil::cuda::synchronize();

  ScanResult r = selective_scan_forward(a, true);
  const double elems = double(Bn) * Dn * Ln, bc = double(Bn) * Nn * Ln;
  const double fwd_bytes = elems * 2 * 4 + bc * 2 * 2 + double(r.checkpoints.nbytes());  // u, delta, z, out; B, C
  const double bwd_bytes = elems * 2 * 7 + bc * 2 * 4 + double(r.checkpoints.nbytes());  // + dout; du, ddelta, dz
  std::printf("shape B%lld D%lld L%lld N%lld bf16, softplus, delta bias, z, D\n", (long long)Bn, (long long)Dn,
              (long long)Ln, (long long)Nn);
  float f_ms = median_ms([&] { selective_scan_forward(a, true); }, runs);
  float fi_ms = median_ms([&] { selective_scan_forward(a, false); }, runs);
  const double exps = elems * Nn;
  std::printf("  forward (saving checkpoints)   %8.3f ms  %7.1f GB/s (%4.1f%% of copy)  %6.2f Tops ex2/s\n", f_ms,
              fwd_bytes / f_ms / 1e6, 100.0 * fwd_bytes / f_ms / 1e6 / copy_gbs, exps / f_ms / 1e9);
  std::printf("  forward (inference, no saving) %8.3f ms\n", fi_ms);
  // Both backward main kernels side by side (ScanBackward); the per-token line below uses the
  // one COIL_SCAN_BWD selects.
  const ScanBackward selected = scan_backward_kind();
  float fb_ms = 0.f;
  for (ScanBackward kind : {ScanBackward::one_channel, ScanBackward::channel_pairs}) {
    set_scan_backward_kind(kind);
    const char* name = kind == ScanBackward::one_channel ? "one" : "pairs";
    const float b_ms = median_ms([&] { selective_scan_backward(a, r, gout, Tensor(), false); }, runs);
    const float bd_ms = median_ms([&] { selective_scan_backward(a, r, gout, Tensor(), true); }, runs);
    const float fbk_ms = median_ms(
        [&] {
          ScanResult rr = selective_scan_forward(a, true);
          selective_scan_backward(a, rr, gout, Tensor(), false);
        },
        runs);
    if (kind == selected) fb_ms = fbk_ms;
    std::printf("  backward %-7s (atomics for dB, dC)  %8.3f ms  %7.1f GB/s\n", name, b_ms, bwd_bytes / b_ms / 1e6);
    std::printf("  backward %-7s (deterministic)       %8.3f ms\n", name, bd_ms);
    std::printf("  forward + backward %-7s             %8.3f ms\n", name, fbk_ms);
  }
  set_scan_backward_kind(selected);
  const double tokens = double(Bn) * Ln;
  std::printf("  per token: forward %.2f ns, forward + backward %.2f ns (%.3f ns per channel)\n", 1e6 * f_ms / tokens,
              1e6 * fb_ms / tokens, 1e6 * fb_ms / tokens / Dn);
  std::printf("  saved for backward: %.1f MB of checkpoints = %.0f bytes per token (plus the inputs)\n",
              r.checkpoints.nbytes() / 1e6, double(r.checkpoints.nbytes()) / double(Bn * Ln));

  // Naive: every state to memory (fp32), then a readout.
  const double hs_bytes = elems * Nn * 4;
  if (hs_bytes < 20e9) {
    float* hs = nullptr;
    COIL_CUDA_CHECK(cudaMalloc(&hs, size_t(hs_bytes)));
    Tensor out = Tensor::empty({Bn, Ln, Dn}, dt, Device::cuda());
    using T = __nv_bfloat16;
    auto naive = [&] {
      const int64_t threads = Bn * Dn * Nn;
      naive_states<T><<<unsigned((threads + 127) / 128), 128, 0, coil::cuda::compute_stream()>>>(
          static_cast<const T*>(a.u.raw()), static_cast<const T*>(a.delta.raw()), a.A.data<float>(),
          static_cast<const T*>(a.B.raw()), a.delta_bias.data<float>(), hs, Bn * Dn, int(Dn), int(Ln), int(Nn));
      naive_readout<T><<<unsigned((int64_t(elems) + 255) / 256), 256, 0, coil::cuda::compute_stream()>>>(
          static_cast<const T*>(a.u.raw()), static_cast<const T*>(a.z.raw()), static_cast<const T*>(a.C.raw()),
          a.D.data<float>(), hs, static_cast<T*>(out.raw()), int64_t(elems), int(Dn), int(Nn));
    };
    float n_ms = median_ms(naive, std::max(3, runs / 4));
    std::printf("  naive (all %.2f GB of states to memory and back) %8.3f ms  = %.1fx the fused forward\n",
                hs_bytes / 1e9, n_ms, n_ms / f_ms);
    cudaFree(hs);
  }
  // One (B, L, D) -> (B, D, L) transpose copy: the unit of what the channel-last layout
  // removed from the Mamba mixer (xz, 2 D wide, then x after the conv, delta and y: 5 units
  // per forward and 5 per backward, plus the small B and C).
  {
    Tensor t = Tensor::empty({Bn, Dn, Ln}, dt, Device::cuda());
    const dim3 grid(unsigned((Dn + 31) / 32), unsigned((Ln + 31) / 32), unsigned(Bn));
    float t_ms = median_ms(
        [&] {
          transpose_kernel<<<grid, dim3(32, 8), 0, coil::cuda::compute_stream()>>>(
              static_cast<const __nv_bfloat16*>(a.u.raw()), static_cast<__nv_bfloat16*>(t.raw()), int(Ln), int(Dn));
        },
        runs);
    std::printf("  one transpose copy (B, L, D) -> (B, D, L) %8.3f ms  %7.1f GB/s\n", t_ms, elems * 4 / t_ms / 1e6);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (!cuda_available()) {
    std::printf("bench_scan: no CUDA device (%s)\n", cuda_unavailable_reason().c_str());
    return 0;
  }
  if (argc > 1 && std::string(argv[1]) == "profile") {  // one forward and one backward, for ncu
    const int64_t Bn = 16, Dn = 1536, Ln = 2048, Nn = 16;
    const ScanArgs a = random_args(Bn, Dn, Ln, Nn);
    Tensor gout = rand_tensor({Bn, Ln, Dn}, DType::bf16, -1.f, 1.f, 9);
    ScanResult r = selective_scan_forward(a, true);
    selective_scan_backward(a, r, gout, Tensor(), false);
    coil::cuda::synchronize();
    return 0;
  }
  const int runs = argc > 1 ? std::atoi(argv[1]) : 30;
  if (argc > 3 && std::string(argv[2]) == "--waves") {  // the segments' trade
    std::vector<float> waves;
    for (char *w = argv[3], *end = w; *w; w = *end == ',' ? end + 1 : end) {
      waves.push_back(std::strtof(w, &end));
      if (end == w || waves.back() <= 0.f) {
        std::fprintf(stderr, "bench_scan: --waves takes positive numbers separated by commas, got '%s'\n", argv[3]);
        return 1;
      }
    }
    run_waves(16, 1536, 2048, 16, runs, waves);
    run_waves(4, 1536, 8192, 16, runs, waves);
    run_waves(1, 2048, 65536, 16, runs, waves);
    return 0;
  }
  cudaDeviceProp prop;
  cudaGetDeviceProperties(&prop, coil::cuda::current_device());
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  // Device-to-device copy bandwidth (read + write bytes), 1 GiB.
  const double copy_gbs = bench::copy_bandwidth_gbs(size_t(1) << 30, 10);
  std::printf("device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);
  run_shape(16, 1536, 2048, 16, runs, copy_gbs);
  run_shape(4, 1536, 8192, 16, runs, copy_gbs);
  run_shape(1, 2048, 65536, 16, runs, copy_gbs);
  run_shape(8, 2048, 4096, 16, runs, copy_gbs);
  {  // The short convolution that precedes the scan in the Mamba mixer.
    const int64_t Bn = 16, Dn = 1536, Ln = 2048, K = 4;
    Tensor x = rand_tensor({Bn, Ln, Dn}, DType::bf16, -1.f, 1.f, 11);
    Tensor w = rand_tensor({Dn, K}, DType::f32, -0.5f, 0.5f, 12);
    Tensor bias = rand_tensor({Dn}, DType::f32, -0.5f, 0.5f, 13);
    Tensor go = rand_tensor({Bn, Ln, Dn}, DType::bf16, -1.f, 1.f, 14);
    float f_ms = median_ms([&] { conv1d_forward(x, w, bias, true); }, runs);
    float b_ms = median_ms([&] { conv1d_backward(go, x, w, bias, true); }, runs);
    const double e = double(Bn) * Dn * Ln * 2;
    std::printf("conv1d B%lld D%lld L%lld width %lld bf16 + bias + SiLU: forward %.3f ms (%.0f GB/s), backward %.3f ms "
                "(%.0f GB/s)\n", (long long)Bn, (long long)Dn, (long long)Ln, (long long)K, f_ms, 2 * e / f_ms / 1e6,
                b_ms, 3 * e / b_ms / 1e6);
  }
  return 0;
}
