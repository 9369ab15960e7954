// CPU reference of the decode kernels: plain loops written from the math in kernels/decode.h.
#include <cmath>
#include <vector>

#include "kernels/decode.h"

namespace coil::kernels::cpu {
namespace {

double silu(double v) { return v / (1.0 + std::exp(-v)); }
double softplus(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

template <class T>
void conv1d_update_impl(T* state, const T* xz, const T* w, const T* bias, T* out, int64_t batch, int64_t dim,
                        int64_t width) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t d = 0; d < dim; ++d) {
      T* s = state + b * (width - 1) * dim + d;  // s[k * dim], k < width - 1
      const T x = xz[b * 2 * dim + d];
      double acc = bias ? double(bias[d]) : 0.0;
      for (int64_t k = 0; k < width; ++k) acc += double(w[d * width + k]) * double(k < width - 1 ? s[k * dim] : x);
      out[b * dim + d] = T(silu(acc));
      for (int64_t k = 0; k + 1 < width - 1; ++k) s[k * dim] = s[(k + 1) * dim];
      if (width > 1) s[(width - 2) * dim] = x;
    }
}

template <class T>
void state_update_impl(const StateUpdateArgs& a, T* out) {
  const int64_t batch = a.state.size(0), dim = a.state.size(1), n_state = a.state.size(2);
  const int64_t dbl = a.x_dbl.size(1), b_col = dbl - 2 * n_state, c_col = dbl - n_state;
  T* state = a.state.data<T>();
  const T *x = a.x.data<T>(), *delta = a.delta.data<T>(), *A_log = a.A_log.data<T>(), *x_dbl = a.x_dbl.data<T>(),
          *xz = a.xz.data<T>();
  const T* D = a.D.defined() ? a.D.data<T>() : nullptr;
  const T* bias = a.delta_bias.defined() ? a.delta_bias.data<T>() : nullptr;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t d = 0; d < dim; ++d) {
      const double u = double(x[b * dim + d]);
      const double dt = softplus(double(delta[b * dim + d]) + (bias ? double(bias[d]) : 0.0));
      double y = D ? double(D[d]) * u : 0.0;
      T* h = state + (b * dim + d) * n_state;
      for (int64_t n = 0; n < n_state; ++n) {
        const double A = -std::exp(double(A_log[d * n_state + n]));
        const double Bn = double(x_dbl[b * dbl + b_col + n]), Cn = double(x_dbl[b * dbl + c_col + n]);
        h[n] = T(std::exp(dt * A) * double(h[n]) + dt * Bn * u);
        y += Cn * double(h[n]);
      }
      out[b * dim + d] = T(y * silu(double(xz[b * 2 * dim + dim + d])));
    }
}

template <class T>
void append_kv_impl(const T* qkv, T* k_cache, T* v_cache, const int32_t* positions, int64_t batch, int64_t T_len,
                    int64_t heads, int64_t hd, int64_t capacity) {
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < T_len; ++t) {
      const int64_t slot = int64_t(positions[b]) + t;
      if (slot >= capacity) continue;
      for (int64_t h = 0; h < heads; ++h) {
        const T* k = qkv + (((b * T_len + t) * 3 + 1) * heads + h) * hd;
        const T* v = qkv + (((b * T_len + t) * 3 + 2) * heads + h) * hd;
        T* kd = k_cache + ((b * heads + h) * capacity + slot) * hd;
        T* vd = v_cache + ((b * heads + h) * capacity + slot) * hd;
        for (int64_t i = 0; i < hd; ++i) kd[i] = k[i], vd[i] = v[i];
      }
    }
}

template <class T>
void attention_decode_impl(const DecodeAttentionProblem& p, const T* q, int64_t q_batch_stride, const T* k_cache,
                           const T* v_cache, const int32_t* positions, T* out) {
  const int64_t hd = p.head_dim;
  std::vector<double> scores, acc(static_cast<size_t>(hd));
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t pos = positions[b];
    const int64_t first = p.window > 0 ? std::max<int64_t>(0, pos - p.window + 1) : 0;
    for (int64_t h = 0; h < p.heads; ++h) {
      const T* qr = q + b * q_batch_stride + h * hd;
      const T* K = k_cache + (b * p.heads + h) * p.capacity * hd;
      const T* V = v_cache + (b * p.heads + h) * p.capacity * hd;
      scores.assign(size_t(pos + 1 - first), 0.0);
      double m = -INFINITY;
      for (int64_t s = first; s <= pos; ++s) {
        double dot = 0;
        for (int64_t i = 0; i < hd; ++i) dot += double(qr[i]) * double(K[s * hd + i]);
        scores[size_t(s - first)] = dot * p.scale;
        m = std::max(m, scores[size_t(s - first)]);
      }
      double sum = 0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t s = first; s <= pos; ++s) {
        const double e = std::exp(scores[size_t(s - first)] - m);
        sum += e;
        for (int64_t i = 0; i < hd; ++i) acc[size_t(i)] += e * double(V[s * hd + i]);
      }
      for (int64_t i = 0; i < hd; ++i) out[(b * p.heads + h) * hd + i] = T(acc[size_t(i)] / sum);
    }
  }
}

}  // namespace

void conv1d_update(const Tensor& conv_state, const Tensor& xz, const Tensor& weight, const Tensor& bias,
                   const Tensor& out) {
  dispatch_cpu_float("conv1d_update", xz, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    conv1d_update_impl<T>(conv_state.data<T>(), xz.data<T>(), weight.data<T>(),
                          bias.defined() ? bias.data<T>() : nullptr, out.data<T>(), conv_state.size(0),
                          weight.size(0), weight.size(1));
  });
}

void selective_state_update(const StateUpdateArgs& args, const Tensor& out) {
  dispatch_cpu_float("selective_state_update", args.x, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    state_update_impl<T>(args, out.data<T>());
  });
}

void append_kv(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions) {
  dispatch_cpu_float("append_kv", qkv, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    append_kv_impl<T>(qkv.data<T>(), k_cache.data<T>(), v_cache.data<T>(), positions.data<int32_t>(), qkv.size(0),
                      qkv.size(1), qkv.size(3), qkv.size(4), k_cache.size(2));
  });
}

void attention_decode(const DecodeAttentionProblem& p, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      const Tensor& positions, const Tensor& out) {
  dispatch_cpu_float("attention_decode", q, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    attention_decode_impl<T>(p, q.data<T>(), q.numel() / p.batch, k_cache.data<T>(), v_cache.data<T>(),
                             positions.data<int32_t>(), out.data<T>());
  });
}

}  // namespace coil::kernels::cpu
