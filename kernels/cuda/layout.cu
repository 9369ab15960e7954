// Layout copies on the GPU. Elements are moved as raw 2-, 4- or 8-byte words, so every dtype
// goes through the same kernels. Memory traffic: one read and one write of every element.
#include <cstdint>

#include "core/cuda.h"
#include "kernels/layout.h"

namespace coil::kernels::cuda {
namespace {

constexpr int kTile = 32, kRows = 8;

// C == 1: x [A, D0, B, D1] -> out [A, D1, B, D0], one 32x32 tile of (i, j) per block, staged
// in shared memory so that both the read (along j) and the write (along i) are coalesced.
// grid (ceil(D1/32), ceil(D0/32), min(A*B, 65535)); blockIdx.z strides over the A*B pairs.
template <class W>
__global__ void transpose_tiled_kernel(const W* x, W* out, int64_t AB, int64_t D0, int64_t B, int64_t D1) {
  __shared__ W tile[kTile][kTile + 1];
  int64_t j0 = int64_t(blockIdx.x) * kTile, i0 = int64_t(blockIdx.y) * kTile;
  for (int64_t ab = blockIdx.z; ab < AB; ab += gridDim.z) {
    int64_t a = ab / B, b = ab % B;
    for (int r = threadIdx.y; r < kTile; r += kRows) {
      int64_t i = i0 + r, j = j0 + threadIdx.x;
      if (i < D0 && j < D1) tile[r][threadIdx.x] = x[((a * D0 + i) * B + b) * D1 + j];
    }
    __syncthreads();
    for (int r = threadIdx.y; r < kTile; r += kRows) {
      int64_t j = j0 + r, i = i0 + threadIdx.x;
      if (i < D0 && j < D1) out[((a * D1 + j) * B + b) * D0 + i] = tile[threadIdx.x][r];
    }
    __syncthreads();
  }
}

// General case: out [A, D1, B, D0, C][o] = x[A, D0, B, D1, C] with the two dims swapped; one
// thread per output element (rows of C are contiguous on both sides).
template <class W>
__global__ void transpose_generic_kernel(const W* x, W* out, int64_t n, int64_t D0, int64_t B, int64_t D1,
                                         int64_t C) {
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < n;
       o += int64_t(gridDim.x) * blockDim.x) {
    int64_t c = o % C, t = o / C;
    int64_t i = t % D0;
    t /= D0;
    int64_t b = t % B;
    t /= B;
    int64_t j = t % D1;
    int64_t a = t / D1;
    out[o] = x[(((a * D0 + i) * B + b) * D1 + j) * C + c];
  }
}

// dst[r * dst_ld + j] = src[r * src_ld + j] for r < rows, j < cols (pointers already offset).
template <class W>
__global__ void copy_block_kernel(const W* src, int64_t src_ld, W* dst, int64_t dst_ld, int64_t rows,
                                  int64_t cols) {
  int64_t n = rows * cols;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n;
       k += int64_t(gridDim.x) * blockDim.x) {
    int64_t r = k / cols, j = k % cols;
    dst[r * dst_ld + j] = src[r * src_ld + j];
  }
}

template <class F>
void dispatch_word(const char* op, const Tensor& t, F&& f) {
  switch (dtype_size(t.dtype())) {
    case 2: return f(static_cast<uint16_t*>(nullptr));
    case 4: return f(static_cast<uint32_t*>(nullptr));
    case 8: return f(static_cast<uint64_t*>(nullptr));
    default: fail("{}: unsupported element size for {}", op, describe(t));
  }
}

int grid_for(int64_t n) { return int(std::min<int64_t>((n + 255) / 256, 132 * 32)); }

}  // namespace

void transpose5(const Tensor& x, int64_t A, int64_t D0, int64_t B, int64_t D1, int64_t C, const Tensor& out) {
  cudaStream_t stream = coil::cuda::compute_stream();
  dispatch_word("transpose", x, [&](auto* type) {
    using W = std::remove_pointer_t<decltype(type)>;
    const W* px = static_cast<const W*>(x.raw());
    W* po = static_cast<W*>(out.raw());
    if (C == 1 && D0 >= 8 && D1 >= 8 && (D0 + kTile - 1) / kTile <= 65535) {
      dim3 grid(unsigned((D1 + kTile - 1) / kTile), unsigned((D0 + kTile - 1) / kTile),
                unsigned(std::min<int64_t>(A * B, 65535)));
      transpose_tiled_kernel<<<grid, dim3(kTile, kRows), 0, stream>>>(px, po, A * B, D0, B, D1);
    } else {
      int64_t n = x.numel();
      transpose_generic_kernel<<<grid_for(n), 256, 0, stream>>>(px, po, n, D0, B, D1, C);
    }
  });
  COIL_CUDA_CHECK_LAUNCH("transpose", "x {} as [{}, {}, {}, {}, {}]", describe(x), A, D0, B, D1, C);
}

void copy_block(const Tensor& src, int64_t src_ld, int64_t src_col, const Tensor& dst, int64_t dst_ld,
                int64_t dst_col, int64_t rows, int64_t cols) {
  dispatch_word("copy_block", src, [&](auto* type) {
    using W = std::remove_pointer_t<decltype(type)>;
    copy_block_kernel<<<grid_for(rows * cols), 256, 0, coil::cuda::compute_stream()>>>(
        static_cast<const W*>(src.raw()) + src_col, src_ld, static_cast<W*>(dst.raw()) + dst_col, dst_ld,
        rows, cols);
  });
  COIL_CUDA_CHECK_LAUNCH("copy_block", "{} rows of {} from {} into {}", rows, cols, describe(src), describe(dst));
}

}  // namespace coil::kernels::cuda
