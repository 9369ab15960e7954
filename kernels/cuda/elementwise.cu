// Element-wise kernels on the GPU: f32 or bf16 at the memory interface, fp32 math. All are
// memory bound: a binary op reads a and b (b once per broadcast row, served from L2/L1) and
// writes out, a unary op reads x and writes out, a unary backward reads grad and x and writes
// out. Grid-stride loops; the op is a template parameter, so the inner loop has no switch.
#include <cuda_bf16.h>

#include <initializer_list>
#include <type_traits>

#include "core/cuda.h"
#include "kernels/cuda/float_access.cuh"
#include "kernels/elementwise.h"

namespace coil::kernels::cuda {
namespace {

__device__ __forceinline__ float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }

template <UnaryOp op>
__device__ __forceinline__ float apply(float x) {
  if constexpr (op == UnaryOp::exp) return expf(x);
  if constexpr (op == UnaryOp::log) return logf(x);
  if constexpr (op == UnaryOp::sigmoid) return sigmoid_of(x);
  if constexpr (op == UnaryOp::silu) return x * sigmoid_of(x);
  if constexpr (op == UnaryOp::gelu) {
    float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  }
  if constexpr (op == UnaryOp::softplus) return x > 20.0f ? x : log1pf(expf(x));
  return x;
}

template <UnaryOp op>
__device__ __forceinline__ float derivative(float x) {
  if constexpr (op == UnaryOp::exp) return expf(x);
  if constexpr (op == UnaryOp::log) return 1.0f / x;
  if constexpr (op == UnaryOp::sigmoid) {
    float s = sigmoid_of(x);
    return s * (1.0f - s);
  }
  if constexpr (op == UnaryOp::silu) {
    float s = sigmoid_of(x);
    return s * (1.0f + x * (1.0f - s));
  }
  if constexpr (op == UnaryOp::gelu) {
    const float c = 0.7978845608028654f;
    float u = c * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * x * x);
  }
  if constexpr (op == UnaryOp::softplus) return x > 20.0f ? 1.0f : sigmoid_of(x);
  return 0.0f;
}

template <BinaryOp op>
__device__ __forceinline__ float combine(float u, float v) {
  if constexpr (op == BinaryOp::add) return u + v;
  if constexpr (op == BinaryOp::sub) return u - v;
  if constexpr (op == BinaryOp::mul) return u * v;
  return u / v;
}

// out[i] = a[i] op b[i mod nb]; nb == n is the plain case (no modulo).
template <BinaryOp op, bool broadcast, class T>
__global__ void binary_kernel(const T* a, const T* b, T* out, int64_t n, int64_t nb) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store(out, i, combine<op>(load(a, i), load(b, broadcast ? i % nb : i)));
}

// out[i] = factor * x[i]
template <class T>
__global__ void scale_kernel(const T* x, T* out, int64_t n, float factor) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store(out, i, factor * load(x, i));
}

// out[i] = f(x[i])
template <UnaryOp op, class T>
__global__ void unary_kernel(const T* x, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store(out, i, apply<op>(load(x, i)));
}

// out[i] = grad[i] * f'(x[i])
template <UnaryOp op, class T>
__global__ void unary_backward_kernel(const T* grad, const T* x, T* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    store(out, i, load(grad, i) * derivative<op>(load(x, i)));
}

// SwiGLU on the fused up-projection: h [rows, 2n] = (a | g) -> out [rows, n] = a * silu(g).
// One thread per unit of N consecutive outputs (16 bytes where n and the pointers allow it).
// Memory: reads h once and writes out once, 3n elements a row (split + silu + mul move 9n).
template <class T, int N>
__global__ void swiglu_kernel(const T* h, T* out, int64_t rows, int64_t n) {
  using P = Pack<T, N>;
  const int64_t units_per_row = n / N, units = rows * units_per_row;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units; u += int64_t(gridDim.x) * blockDim.x) {
    const T* a_at = h + (u / units_per_row) * 2 * n + (u % units_per_row) * N;
    const P a = *reinterpret_cast<const P*>(a_at), g = *reinterpret_cast<const P*>(a_at + n);
    P y;
#pragma unroll
    for (int j = 0; j < N; ++j) y.v[j] = from_f<T>(to_f(a.v[j]) * apply<UnaryOp::silu>(to_f(g.v[j])));
    reinterpret_cast<P*>(out)[u] = y;
  }
}

// SwiGLU backward: dh [rows, 2n] = (grad * silu(g) | grad * a * silu'(g)), silu recomputed from
// h. Memory: reads grad and h, writes dh, 5n elements a row (the unfused backwards move 13n).
template <class T, int N>
__global__ void swiglu_backward_kernel(const T* grad, const T* h, T* dh, int64_t rows, int64_t n) {
  using P = Pack<T, N>;
  const int64_t units_per_row = n / N, units = rows * units_per_row;
  for (int64_t u = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; u < units; u += int64_t(gridDim.x) * blockDim.x) {
    const int64_t a_at = (u / units_per_row) * 2 * n + (u % units_per_row) * N;
    const P a = *reinterpret_cast<const P*>(h + a_at), g = *reinterpret_cast<const P*>(h + a_at + n);
    const P gr = reinterpret_cast<const P*>(grad)[u];
    P da, dg;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float gv = to_f(g.v[j]), grv = to_f(gr.v[j]);
      da.v[j] = from_f<T>(grv * apply<UnaryOp::silu>(gv));
      dg.v[j] = from_f<T>(grv * to_f(a.v[j]) * derivative<UnaryOp::silu>(gv));
    }
    *reinterpret_cast<P*>(dh + a_at) = da;
    *reinterpret_cast<P*>(dh + a_at + n) = dg;
  }
}

constexpr int kThreads = 256;
int grid_for(int64_t n) { return int(std::min<int64_t>((n + kThreads - 1) / kThreads, 132 * 32)); }

template <class F>
void dispatch_unary(UnaryOp op, F&& f) {
  switch (op) {
    case UnaryOp::exp: return f(std::integral_constant<UnaryOp, UnaryOp::exp>());
    case UnaryOp::log: return f(std::integral_constant<UnaryOp, UnaryOp::log>());
    case UnaryOp::sigmoid: return f(std::integral_constant<UnaryOp, UnaryOp::sigmoid>());
    case UnaryOp::silu: return f(std::integral_constant<UnaryOp, UnaryOp::silu>());
    case UnaryOp::gelu: return f(std::integral_constant<UnaryOp, UnaryOp::gelu>());
    case UnaryOp::softplus: return f(std::integral_constant<UnaryOp, UnaryOp::softplus>());
  }
}

template <class F>
void dispatch_binary(BinaryOp op, F&& f) {
  switch (op) {
    case BinaryOp::add: return f(std::integral_constant<BinaryOp, BinaryOp::add>());
    case BinaryOp::sub: return f(std::integral_constant<BinaryOp, BinaryOp::sub>());
    case BinaryOp::mul: return f(std::integral_constant<BinaryOp, BinaryOp::mul>());
    case BinaryOp::div: return f(std::integral_constant<BinaryOp, BinaryOp::div>());
  }
}

// Calls f(std::integral_constant<int, N>{}) with N the elements a thread moves at once: 16
// bytes when rows of n elements keep every pointer 16-byte aligned, else 1.
template <class T, class F>
void dispatch_units(int64_t n, std::initializer_list<const void*> ptrs, F&& f) {
  bool packs = n % Pack<T>::n == 0;
  for (const void* p : ptrs) packs = packs && aligned16(p);
  if (packs) f(std::integral_constant<int, Pack<T>::n>{});
  else f(std::integral_constant<int, 1>{});
}

}  // namespace

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  int64_t n = a.numel(), nb = b.numel();
  cudaStream_t stream = coil::cuda::compute_stream();
  dispatch_gpu_float(binary_op_name(op), a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* pa = static_cast<const T*>(a.raw());
    const T* pb = static_cast<const T*>(b.raw());
    T* po = static_cast<T*>(out.raw());
    dispatch_binary(op, [&](auto tag) {
      constexpr BinaryOp o = decltype(tag)::value;
      if (nb == n)
        binary_kernel<o, false><<<grid_for(n), kThreads, 0, stream>>>(pa, pb, po, n, nb);
      else
        binary_kernel<o, true><<<grid_for(n), kThreads, 0, stream>>>(pa, pb, po, n, nb);
    });
  });
  COIL_CUDA_CHECK_LAUNCH(binary_op_name(op), "a {}, b {}", describe(a), describe(b));
}

void scale(const Tensor& x, double factor, const Tensor& out) {
  int64_t n = x.numel();
  dispatch_gpu_float("scale", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    scale_kernel<<<grid_for(n), kThreads, 0, coil::cuda::compute_stream()>>>(
        static_cast<const T*>(x.raw()), static_cast<T*>(out.raw()), n, float(factor));
  });
  COIL_CUDA_CHECK_LAUNCH("scale", "x {}, factor {}", describe(x), factor);
}

void unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  int64_t n = x.numel();
  dispatch_gpu_float(unary_op_name(op), x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    dispatch_unary(op, [&](auto tag) {
      unary_kernel<decltype(tag)::value><<<grid_for(n), kThreads, 0, coil::cuda::compute_stream()>>>(
          static_cast<const T*>(x.raw()), static_cast<T*>(out.raw()), n);
    });
  });
  COIL_CUDA_CHECK_LAUNCH(unary_op_name(op), "x {}", describe(x));
}

void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& out) {
  int64_t n = x.numel();
  dispatch_gpu_float(unary_op_name(op), x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    dispatch_unary(op, [&](auto tag) {
      unary_backward_kernel<decltype(tag)::value>
          <<<grid_for(n), kThreads, 0, coil::cuda::compute_stream()>>>(
              static_cast<const T*>(grad.raw()), static_cast<const T*>(x.raw()),
              static_cast<T*>(out.raw()), n);
    });
  });
  COIL_CUDA_CHECK_LAUNCH("unary backward", "{} backward, x {}", unary_op_name(op), describe(x));
}

void swiglu(const Tensor& h, const Tensor& out) {
  const int64_t n = out.size(-1), rows = out.numel() / n;
  dispatch_gpu_float("swiglu", h, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* ph = static_cast<const T*>(h.raw());
    T* po = static_cast<T*>(out.raw());
    dispatch_units<T>(n, {ph, po}, [&](auto units) {
      constexpr int N = decltype(units)::value;
      swiglu_kernel<T, N><<<grid_for(rows * n / N), kThreads, 0, coil::cuda::compute_stream()>>>(ph, po, rows, n);
    });
  });
  COIL_CUDA_CHECK_LAUNCH("swiglu", "h {}", describe(h));
}

void swiglu_backward(const Tensor& grad, const Tensor& h, const Tensor& dh) {
  const int64_t n = grad.size(-1), rows = grad.numel() / n;
  dispatch_gpu_float("swiglu backward", h, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* pg = static_cast<const T*>(grad.raw());
    const T* ph = static_cast<const T*>(h.raw());
    T* pd = static_cast<T*>(dh.raw());
    dispatch_units<T>(n, {pg, ph, pd}, [&](auto units) {
      constexpr int N = decltype(units)::value;
      swiglu_backward_kernel<T, N>
          <<<grid_for(rows * n / N), kThreads, 0, coil::cuda::compute_stream()>>>(pg, ph, pd, rows, n);
    });
  });
  COIL_CUDA_CHECK_LAUNCH("swiglu backward", "grad {}, h {}", describe(grad), describe(h));
}

}  // namespace coil::kernels::cuda
