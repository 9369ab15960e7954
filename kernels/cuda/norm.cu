#include <cuda_bf16.h>

#include <mutex>
#include <vector>

#include "core/cuda.h"
#include "kernels/norm.h"

#include "kernels/cuda/block_reduce.cuh"

namespace coil::kernels::cuda {
namespace {




// V consecutive elements at p as floats: 16-byte loads when V elements span whole packs (the
// caller guarantees alignment), else scalar loads (V == 1).
template <int V, class T>
__device__ __forceinline__ void load_v(const T* p, float (&out)[V]) {
  if constexpr (V * sizeof(T) >= 16) {
    constexpr int P = Pack<T>::n;
#pragma unroll
    for (int q = 0; q < V / P; ++q) {
      Pack<T> pk = reinterpret_cast<const Pack<T>*>(p)[q];
#pragma unroll
      for (int j = 0; j < P; ++j) out[q * P + j] = to_f(pk.v[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) out[j] = to_f(p[j]);
  }
}
template <int V, class T>
__device__ __forceinline__ void store_v(T* p, const float (&in)[V]) {
  if constexpr (V * sizeof(T) >= 16) {
    constexpr int P = Pack<T>::n;
#pragma unroll
    for (int q = 0; q < V / P; ++q) {
      Pack<T> pk;
#pragma unroll
      for (int j = 0; j < P; ++j) pk.v[j] = from_f<T>(in[q * P + j]);
      reinterpret_cast<Pack<T>*>(p)[q] = pk;
    }
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = from_f<T>(in[j]);
  }
}

// weight and bias: f32 or the activation dtype, read through the cache.
__device__ __forceinline__ float load_param(const void* p, bool f32, int64_t i) {
  return f32 ? __ldg(static_cast<const float*>(p) + i) : __bfloat162float(static_cast<const bf16_t*>(p)[i]);
}


// Forward, one block per row; thread t owns the groups of V elements t, t + blockDim, ...
// Pass 1 reads x (+ residual) and writes r (fused variants); layer norm's second pass reads r
// again for the variance (two-pass, no cancellation); the last pass writes y. The re-reads hit
// L1/L2: DRAM traffic per element is x (+ residual in, residual out in fp32) + y.
template <class T, int V>
__device__ void norm_forward_row(const T* x, const float* res, float* rout, const void* w,
                                 const void* b, bool param_f32, T* y, float* mean_out,
                                 float* rstd_out, int64_t D, float eps, bool rms, float* smem) {
  const int64_t groups = D / V;
  auto load_r = [&](int64_t k, float(&r)[V], bool first) {
    if (rout && !first) {
      load_v<V>(rout + k * V, r);
      return;
    }
    load_v<V>(x + k * V, r);
    if (res) {
      float q[V];
      load_v<V>(res + k * V, q);
#pragma unroll
      for (int j = 0; j < V; ++j) r[j] += q[j];
    }
    if (rout) store_v<V>(rout + k * V, r);
  };
  float s = 0.f;
  for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
    float r[V];
    load_r(k, r, true);
#pragma unroll
    for (int j = 0; j < V; ++j) s += rms ? r[j] * r[j] : r[j];
  }
  s = block_sum(s, smem);
  float mean = 0.f, var;
  if (rms) {
    var = s / float(D);
  } else {
    mean = s / float(D);
    float q = 0.f;
    for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
      float r[V];
      load_r(k, r, false);
#pragma unroll
      for (int j = 0; j < V; ++j) q += (r[j] - mean) * (r[j] - mean);
    }
    var = block_sum(q, smem) / float(D);
  }
  const float rstd = rsqrtf(var + eps);
  if (threadIdx.x == 0) {
    if (mean_out) *mean_out = mean;
    *rstd_out = rstd;
  }
  for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
    float r[V], o[V];
    load_r(k, r, false);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      int64_t c = k * V + j;
      o[j] = (r[j] - mean) * rstd * load_param(w, param_f32, c) + (b ? load_param(b, param_f32, c) : 0.f);
    }
    store_v<V>(y + k * V, o);
  }
}

template <class T>
__global__ void norm_forward_kernel(const T* x, const float* res, float* rout, const void* w,
                                    const void* b, bool param_f32, T* y, float* mean, float* rstd,
                                    int64_t D, float eps, bool rms, bool vec) {
  __shared__ float smem[32];
  const int64_t row = blockIdx.x, off = row * D;
  float* mp = mean ? mean + row : nullptr;
  constexpr int V = Pack<T>::n;
  if (vec)
    norm_forward_row<T, V>(x + off, res ? res + off : nullptr, rout ? rout + off : nullptr, w, b,
                           param_f32, y + off, mp, rstd + row, D, eps, rms, smem);
  else
    norm_forward_row<T, 1>(x + off, res ? res + off : nullptr, rout ? rout + off : nullptr, w, b,
                           param_f32, y + off, mp, rstd + row, D, eps, rms, smem);
}

// Backward: block b handles rows b, b + gridDim, ...; thread t owns the same groups of columns
// in every row and adds dy * xhat and dy for them into the block's accumulator (shared memory
// when 2 D floats fit, else the block's own row of the global partials), laid out as
// [2][V][groups] so that a warp's accesses are consecutive. Per row: pass 1 reads dy, r for
// the two row sums, pass 2 reads them again (L1/L2) and writes dx (and d residual).
// DRAM traffic per element: dy + r (+ d residual' in) + dx (+ d residual out).
template <class T, class R, int V>
__device__ void norm_backward_rows(const T* dy, const R* in, const float* dres_out, const float* mean,
                                   const float* rstd, const void* w, bool param_f32, T* dx,
                                   float* dres, float* acc, int64_t rows, int64_t D, bool rms,
                                   float* smem) {
  const int64_t groups = D / V;
  for (int64_t k = threadIdx.x; k < groups; k += blockDim.x)
#pragma unroll
    for (int j = 0; j < 2 * V; ++j) acc[j * groups + k] = 0.f;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * D;
    const float mu = rms ? 0.f : mean[row], rs = rstd[row];
    float sg = 0.f, sgx = 0.f;
    for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
      float g[V], r[V];
      load_v<V>(dy + off + k * V, g);
      load_v<V>(in + off + k * V, r);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float xhat = (r[j] - mu) * rs, gw = g[j] * load_param(w, param_f32, k * V + j);
        sg += gw;
        sgx += gw * xhat;
        acc[j * groups + k] += g[j] * xhat;
        acc[(V + j) * groups + k] += g[j];
      }
    }
    const float c1 = block_sum(sgx, smem) / float(D);
    const float c2 = rms ? 0.f : block_sum(sg, smem) / float(D);
    for (int64_t k = threadIdx.x; k < groups; k += blockDim.x) {
      float g[V], r[V], d[V];
      load_v<V>(dy + off + k * V, g);
      load_v<V>(in + off + k * V, r);
      if (dres_out) load_v<V>(dres_out + off + k * V, d);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        float xhat = (r[j] - mu) * rs, gw = g[j] * load_param(w, param_f32, k * V + j);
        d[j] = rs * (gw - c2 - xhat * c1) + (dres_out ? d[j] : 0.f);
      }
      store_v<V>(dx + off + k * V, d);
      if (dres) store_v<V>(dres + off + k * V, d);
    }
  }
}

template <class T, class R>
__global__ void norm_backward_kernel(const T* dy, const R* in, const float* dres_out, const float* mean,
                                     const float* rstd, const void* w, bool param_f32, T* dx,
                                     float* dres, float* partial, int64_t rows, int64_t D, bool rms,
                                     bool vec, bool acc_in_smem) {
  extern __shared__ float dyn[];
  __shared__ float smem[32];
  float* own = partial + int64_t(blockIdx.x) * 2 * D;
  float* acc = acc_in_smem ? dyn : own;
  constexpr int V = Pack<T>::n;
  if (vec)
    norm_backward_rows<T, R, V>(dy, in, dres_out, mean, rstd, w, param_f32, dx, dres, acc, rows, D, rms, smem);
  else
    norm_backward_rows<T, R, 1>(dy, in, dres_out, mean, rstd, w, param_f32, dx, dres, acc, rows, D, rms, smem);
  if (acc_in_smem)  // each thread copies the entries it owns: no barrier needed
    for (int64_t k = threadIdx.x; k < D / (vec ? V : 1); k += blockDim.x)
      for (int j = 0; j < 2 * (vec ? V : 1); ++j) {
        int64_t i = j * (D / (vec ? V : 1)) + k;
        own[i] = dyn[i];
      }
}

// dweight[c], dbias[c]: the blocks' partials summed in block order (deterministic). Partial
// index of column c = k * V + j is j * groups + k.
__global__ void norm_param_grad_kernel(const float* partial, int blocks, int64_t D, int V, void* dw,
                                       void* db, bool param_f32) {
  int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= D) return;
  const int64_t groups = D / V, i = (c % V) * groups + c / V;
  float sw = 0.f, sb = 0.f;
  for (int b = 0; b < blocks; ++b) {
    sw += partial[int64_t(b) * 2 * D + i];
    sb += partial[int64_t(b) * 2 * D + V * groups + i];
  }
  if (param_f32) {
    static_cast<float*>(dw)[c] = sw;
    if (db) static_cast<float*>(db)[c] = sb;
  } else {
    static_cast<bf16_t*>(dw)[c] = __float2bfloat16(sw);
    if (db) static_cast<bf16_t*>(db)[c] = __float2bfloat16(sb);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

int sm_count() {
  static std::mutex mutex;
  static std::vector<int> counts;
  int d = coil::cuda::current_device();
  std::lock_guard<std::mutex> lock(mutex);
  if (counts.size() <= size_t(d)) counts.resize(size_t(d) + 1, 0);
  if (!counts[size_t(d)]) COIL_CUDA_CHECK(cudaDeviceGetAttribute(&counts[size_t(d)], cudaDevAttrMultiProcessorCount, d));
  return counts[size_t(d)];
}

// One thread per group of V columns (a warp at least, 1024 at most).
int threads_for(int64_t groups) {
  int64_t t = (groups + 31) / 32 * 32;
  return int(std::min<int64_t>(std::max<int64_t>(t, 32), 1024));
}

template <class T>
void forward_typed(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                   double eps, bool rms, const NormForward& out) {
  const int64_t D = x.size(-1), rows = x.numel() / D;
  const T* xp = static_cast<const T*>(x.raw());
  const float* rp = residual.defined() ? residual.data<float>() : nullptr;
  float* op = out.residual.defined() ? out.residual.data<float>() : nullptr;
  T* yp = static_cast<T*>(out.y.raw());
  constexpr int V = Pack<T>::n;
  bool vec = D % V == 0 && aligned16(xp) && aligned16(yp) && (!rp || aligned16(rp)) && (!op || aligned16(op));
  int threads = threads_for(vec ? D / V : D);
  COIL_CHECK(rows < (int64_t(1) << 31), "norm: {} rows exceed the grid", rows);
  norm_forward_kernel<T><<<unsigned(rows), threads, 0, coil::cuda::compute_stream()>>>(
      xp, rp, op, weight.raw(), bias.defined() ? bias.raw() : nullptr, weight.dtype() == DType::f32, yp,
      out.mean.defined() ? out.mean.data<float>() : nullptr, out.rstd.data<float>(), D, float(eps), rms, vec);
  COIL_CUDA_CHECK_LAUNCH("norm_forward", "x {}, residual {}, weight {}, rms {}", describe(x),
                         describe(residual), describe(weight), rms);
}

template <class T, class R>
void backward_typed(const Tensor& grad_y, const Tensor& input, const Tensor& mean, const Tensor& rstd,
                    const Tensor& weight, const Tensor& grad_residual_out, bool rms, const NormBackward& out) {
  const int64_t D = input.size(-1), rows = input.numel() / D;
  const T* gp = static_cast<const T*>(grad_y.raw());
  const R* ip = static_cast<const R*>(input.raw());
  const float* dro = grad_residual_out.defined() ? grad_residual_out.data<float>() : nullptr;
  T* dxp = static_cast<T*>(out.dx.raw());
  float* drp = out.dresidual.defined() ? out.dresidual.data<float>() : nullptr;
  constexpr int V = Pack<T>::n;
  bool vec = D % V == 0 && aligned16(gp) && aligned16(ip) && aligned16(dxp) && (!dro || aligned16(dro)) &&
             (!drp || aligned16(drp));
  int threads = threads_for(vec ? D / V : D);
  int blocks = int(std::min<int64_t>(std::max<int64_t>(rows, 1), int64_t(sm_count()) * 16));
  size_t smem_bytes = size_t(2 * D) * sizeof(float);
  bool in_smem = smem_bytes <= 48 * 1024;
  Tensor partial = Tensor::empty({blocks, 2 * D}, DType::f32, input.device());
  cudaStream_t stream = coil::cuda::compute_stream();
  norm_backward_kernel<T, R><<<blocks, threads, in_smem ? smem_bytes : 0, stream>>>(
      gp, ip, dro, rms ? nullptr : mean.data<float>(), rstd.data<float>(), weight.raw(),
      weight.dtype() == DType::f32, dxp, drp, partial.data<float>(), rows, D, rms, vec, in_smem);
  COIL_CUDA_CHECK_LAUNCH("norm_backward", "dy {}, input {}, weight {}, rms {}", describe(grad_y),
                         describe(input), describe(weight), rms);
  norm_param_grad_kernel<<<unsigned((D + 255) / 256), 256, 0, stream>>>(
      partial.data<float>(), blocks, D, vec ? V : 1, out.dweight.raw(),
      out.dbias.defined() ? out.dbias.raw() : nullptr, out.dweight.dtype() == DType::f32);
  COIL_CUDA_CHECK_LAUNCH("norm_param_grad", "D {}, blocks {}", D, blocks);
}

}  // namespace

void norm_forward(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, bool rms, const NormForward& out) {
  switch (x.dtype()) {
    case DType::f32: return forward_typed<float>(x, residual, weight, bias, eps, rms, out);
    case DType::bf16: return forward_typed<bf16_t>(x, residual, weight, bias, eps, rms, out);
    default: fail("norm: the GPU takes f32 or bf16, got {}", describe(x));
  }
}

void norm_backward(const Tensor& grad_y, const Tensor& input, const Tensor& mean, const Tensor& rstd,
                   const Tensor& weight, const Tensor& grad_residual_out, bool rms, const NormBackward& out) {
  DType t = out.dx.dtype(), r = input.dtype();
  if (t == DType::f32 && r == DType::f32)
    return backward_typed<float, float>(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out);
  if (t == DType::bf16 && r == DType::bf16)
    return backward_typed<bf16_t, bf16_t>(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out);
  if (t == DType::bf16 && r == DType::f32)
    return backward_typed<bf16_t, float>(grad_y, input, mean, rstd, weight, grad_residual_out, rms, out);
  fail("norm_backward: the GPU takes f32 or bf16 gradients with f32 or bf16 inputs, got {} and {}",
       describe(grad_y), describe(input));
}

}  // namespace coil::kernels::cuda
