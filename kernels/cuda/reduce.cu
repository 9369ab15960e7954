// Reductions on the GPU. The input is viewed as [A, R, C] and summed over R in fp32.
// Deterministic: R is cut into S fixed segments (S chosen from the shape only), each block
// sums its segment in a fixed order and tree, partial sums go to an fp32 buffer [A, S, C],
// and a second pass adds the S partials in order. Memory traffic: one read of x (plus
// A*S*C*4 bytes of partials, small), one write of out.
#include "core/cuda.h"
#include "kernels/cuda/float_access.cuh"
#include "kernels/reduce.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kRowThreads = 256;

// C == 1: out[a * S + s] = factor * sum of x[a, r] over segment s of R.
// grid A * S (block b is a = b / S, s = b % S), block kRowThreads. Each thread strides over the segment; then a warp-shuffle
// and shared-memory tree over the block.
template <class In, class Out>
__global__ void row_sum_kernel(const In* x, Out* out, int64_t R, int64_t S, int64_t seg, float factor) {
  int64_t a = blockIdx.x / S;
  int64_t s = blockIdx.x % S;
  int64_t begin = s * seg, end = min(R, begin + seg);
  const In* row = x + a * R;
  float acc = 0.0f;
  for (int64_t r = begin + threadIdx.x; r < end; r += kRowThreads) acc += load(row, r);
  acc = warp_sum(acc);
  __shared__ float warp_sums[kRowThreads / 32];
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < kRowThreads / 32; ++w) total += warp_sums[w];
    store(out, a * S + s, factor * total);
  }
}

constexpr int kColX = 32, kColY = 8;

// C > 1: out[(a * S + s) * C + c] = factor * sum of x[a, r, c] over segment s of R.
// grid A * S * ceil(C / 32) (flattened), block (32, 8): 32 neighbouring columns (coalesced), 8 rows at a
// time, then a fixed-order sum of the 8 row partials in shared memory.
template <class In, class Out>
__global__ void col_sum_kernel(const In* x, Out* out, int64_t R, int64_t C, int64_t S, int64_t seg,
                               float factor) {
  int64_t tiles = (C + kColX - 1) / kColX;
  int64_t b = blockIdx.x;
  int64_t c = (b % tiles) * kColX + threadIdx.x;
  int64_t s = (b / tiles) % S, a = b / (tiles * S);
  int64_t begin = s * seg, end = min(R, begin + seg);
  float acc = 0.0f;
  if (c < C) {
    const In* base = x + a * R * C + c;
    for (int64_t r = begin + threadIdx.y; r < end; r += kColY) acc += load(base, r * C);
  }
  __shared__ float partial[kColY][kColX];
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float total = 0.0f;
    for (int y = 0; y < kColY; ++y) total += partial[y][threadIdx.x];
    store(out, (a * S + s) * C + c, factor * total);
  }
}

// out[a, r, c] = factor * g[a, c]: reads A*C, writes A*R*C elements.
template <class T>
__global__ void expand_kernel(const T* g, T* out, int64_t n, int64_t R, int64_t C, float factor) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    int64_t c = i % C;
    int64_t a = i / (R * C);
    store(out, i, factor * load(g, a * C + c));
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launches one pass: sums x [A, R, C] over segments of R into out [A, S, C].
template <class In, class Out>
void launch_pass(const In* x, Out* out, int64_t A, int64_t R, int64_t C, int64_t S, float factor,
                 cudaStream_t stream) {
  int64_t seg = ceil_div(R, S);
  if (C == 1) {
    row_sum_kernel<<<unsigned(A * S), kRowThreads, 0, stream>>>(x, out, R, S, seg, factor);
  } else {
    unsigned grid = unsigned(A * S * ceil_div(C, kColX));
    col_sum_kernel<<<grid, dim3(kColX, kColY), 0, stream>>>(x, out, R, C, S, seg, factor);
  }
}

}  // namespace

void sum_arc(const Tensor& x, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out) {
  COIL_CHECK(A * (C == 1 ? 1 : ceil_div(C, kColX)) < (int64_t(1) << 31),
             "sum: {} as [{}, {}, {}] exceeds the GPU kernel's grid limit", describe(x), A, R, C);
  cudaStream_t stream = coil::cuda::compute_stream();
  // Segments: enough blocks to fill the GPU (~512), but at least 2048 elements (row case) or
  // 64 rows (column case) per segment. Depends on the shape only, so results are reproducible.
  int64_t base_blocks = C == 1 ? A : A * ceil_div(C, kColX);
  int64_t min_seg = C == 1 ? 2048 : 64;
  int64_t S = std::max<int64_t>(1, std::min(ceil_div(512, base_blocks), ceil_div(R, min_seg)));
  S = std::min<int64_t>(S, 65535);
  dispatch_gpu_float("sum", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* px = static_cast<const T*>(x.raw());
    T* po = static_cast<T*>(out.raw());
    if (S == 1) {
      launch_pass(px, po, A, R, C, 1, float(factor), stream);
    } else {
      Tensor partial = Tensor::empty({A * S * C}, DType::f32, x.device());
      float* pp = partial.data<float>();
      launch_pass(px, pp, A, R, C, S, 1.0f, stream);
      COIL_CUDA_CHECK_LAUNCH("sum (partials)", "x {} as [{}, {}, {}], {} segments", describe(x), A, R, C, S);
      launch_pass(static_cast<const float*>(pp), po, A, S, C, 1, float(factor), stream);
    }
  });
  COIL_CUDA_CHECK_LAUNCH("sum", "x {} as [{}, {}, {}]", describe(x), A, R, C);
}

void expand_arc(const Tensor& g, int64_t A, int64_t R, int64_t C, double factor, const Tensor& out) {
  int64_t n = A * R * C;
  int grid = int(std::min<int64_t>(ceil_div(n, 256), 132 * 32));
  dispatch_gpu_float("expand", g, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    expand_kernel<<<grid, 256, 0, coil::cuda::compute_stream()>>>(
        static_cast<const T*>(g.raw()), static_cast<T*>(out.raw()), n, R, C, float(factor));
  });
  COIL_CUDA_CHECK_LAUNCH("expand", "g {} to [{}, {}, {}]", describe(g), A, R, C);
}

}  // namespace coil::kernels::cuda
