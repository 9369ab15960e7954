// CPU reference for the element-wise kernels: plain loops, written from the math, in the
// tensor's own precision (f32 or f64), over blocks of elements on the CPU threads (each
// element depends on its own inputs only, so any thread count gives the same bits).
#include <cmath>

#include "kernels/cpu/parallel.h"
#include "kernels/elementwise.h"

namespace coil::kernels::cpu {
namespace {

template <class T>
T sigmoid_of(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// gelu, tanh form: 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x^3), c = sqrt(2 / pi)
template <class T>
T gelu_of(T x) {
  const T c = T(0.7978845608028654);
  T u = c * (x + T(0.044715) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}

template <class T>
T gelu_grad(T x) {
  const T c = T(0.7978845608028654);
  T u = c * (x + T(0.044715) * x * x * x);
  T t = std::tanh(u);
  T du = c * (T(1) + T(3) * T(0.044715) * x * x);
  return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * du;
}

template <class T>
T apply(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return std::log(x);
    case UnaryOp::sigmoid: return sigmoid_of(x);
    case UnaryOp::silu: return x * sigmoid_of(x);
    case UnaryOp::gelu: return gelu_of(x);
    case UnaryOp::softplus: return x > T(20) ? x : std::log1p(std::exp(x));
  }
  return x;
}

// f'(x)
template <class T>
T derivative(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::exp: return std::exp(x);
    case UnaryOp::log: return T(1) / x;
    case UnaryOp::sigmoid: {
      T s = sigmoid_of(x);
      return s * (T(1) - s);
    }
    case UnaryOp::silu: {
      T s = sigmoid_of(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::gelu: return gelu_grad(x);
    case UnaryOp::softplus: return x > T(20) ? T(1) : sigmoid_of(x);
  }
  return T(0);
}

}  // namespace

void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_cpu_float(binary_op_name(op), a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* x = a.data<T>();
    const T* y = b.data<T>();
    T* z = out.data<T>();
    int64_t n = a.numel(), nb = b.numel();
    parallel_for(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        T u = x[i], v = y[i % nb];
        switch (op) {
          case BinaryOp::add: z[i] = u + v; break;
          case BinaryOp::sub: z[i] = u - v; break;
          case BinaryOp::mul: z[i] = u * v; break;
          case BinaryOp::div: z[i] = u / v; break;
        }
      }
    });
  });
}

void scale(const Tensor& x, double factor, const Tensor& out) {
  dispatch_cpu_float("scale", x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* p = x.data<T>();
    T* q = out.data<T>();
    parallel_for(x.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) q[i] = T(factor) * p[i];
    });
  });
}

void unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  dispatch_cpu_float(unary_op_name(op), x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* p = x.data<T>();
    T* q = out.data<T>();
    parallel_for(x.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) q[i] = apply(op, p[i]);
    });
  });
}

void unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& out) {
  dispatch_cpu_float(unary_op_name(op), x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* g = grad.data<T>();
    const T* p = x.data<T>();
    T* q = out.data<T>();
    parallel_for(x.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) q[i] = g[i] * derivative(op, p[i]);
    });
  });
}

}  // namespace coil::kernels::cpu
