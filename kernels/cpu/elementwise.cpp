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

// out = a * silu(g) = a * (g * sigmoid(g)) for the halves (a | g) of each row of h (the same
// operations, in the same order, as split + silu + mul: the same bits).
void swiglu(const Tensor& h, const Tensor& out) {
  dispatch_cpu_float("swiglu", h, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* x = h.data<T>();
    T* y = out.data<T>();
    const int64_t n = out.size(-1);
    parallel_for(out.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T* row = x + (i / n) * 2 * n;
        T a = row[i % n], g = row[n + i % n];
        y[i] = a * (g * sigmoid_of(g));
      }
    });
  });
}

// da = grad * silu(g); dg = (grad * a) * silu'(g), silu'(g) = s (1 + g (1 - s)), s = sigmoid(g)
// (the same operations as the backwards of mul and silu).
void swiglu_backward(const Tensor& grad, const Tensor& h, const Tensor& dh) {
  dispatch_cpu_float("swiglu backward", h, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const T* gr = grad.data<T>();
    const T* x = h.data<T>();
    T* dx = dh.data<T>();
    const int64_t n = grad.size(-1);
    parallel_for(grad.numel(), 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t a_at = (i / n) * 2 * n + i % n;
        T a = x[a_at], g = x[a_at + n];
        dx[a_at] = gr[i] * (g * sigmoid_of(g));
        dx[a_at + n] = (gr[i] * a) * derivative(UnaryOp::silu, g);
      }
    });
  });
}

}  // namespace coil::kernels::cpu
