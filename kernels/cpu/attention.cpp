// CPU reference of causal attention: plain softmax attention, one (batch, head, query) row at
// a time, written from the math (with documents a query sees only keys of its own one). The
// backward recomputes the probabilities from q and k (it does not use lse, so it stays exact
// in f64 for gradient checks):
//   s_j = scale * q.k_j (j visible), p = softmax(s), o = sum_j p_j v_j
//   dv_j += p_j do;  dp_j = do.v_j;  ds_j = p_j (dp_j - do.o);  dq = scale sum_j ds_j k_j;
//   dk_j += scale ds_j q
// The (batch, head) pairs run on the CPU threads; each writes only its own rows of the
// outputs, so any thread count gives the same bits.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu/parallel.h"

namespace coil::kernels::cpu {
namespace {

// Whether query t of batch row b sees key s: causal, within the window and the document.
bool visible(const AttentionProblem& pr, int64_t b, int64_t t, int64_t s) {
  const int64_t first = pr.doc_start ? pr.doc_start[b * pr.seq + t] : 0;
  return s <= t && s >= first && (pr.window <= 0 || t - s < pr.window);
}

template <class T>
struct View {
  T* base;
  int64_t T_, H, D, stride;
  T* at(int64_t b, int64_t t, int64_t h) const { return base + (b * T_ + t) * stride + h * D; }
};

// Fills p[0..t] with the softmax of row t (zeros where masked); returns the log-sum-exp.
template <class T>
double row_softmax(const AttentionProblem& pr, const View<const T>& q, const View<const T>& k,
                   int64_t b, int64_t h, int64_t t, std::vector<double>& p) {
  const int64_t D = pr.head_dim;
  double m = -INFINITY;
  const T* qr = q.at(b, t, h);
  for (int64_t s = 0; s <= t; ++s) {
    if (!visible(pr, b, t, s)) {
      p[s] = -INFINITY;
      continue;
    }
    const T* kr = k.at(b, s, h);
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += double(qr[d]) * double(kr[d]);
    p[s] = dot * pr.scale;
    m = std::max(m, p[s]);
  }
  double sum = 0;
  for (int64_t s = 0; s <= t; ++s) {
    p[s] = std::isinf(p[s]) ? 0.0 : std::exp(p[s] - m);
    sum += p[s];
  }
  for (int64_t s = 0; s <= t; ++s) p[s] /= sum;
  return m + std::log(sum);
}

template <class T>
void forward_impl(const AttentionProblem& pr, const void* qp, const void* kp, const void* vp,
                  void* outp, float* lse) {
  const int64_t B = pr.batch, S = pr.seq, H = pr.heads, D = pr.head_dim;
  View<const T> q{static_cast<const T*>(qp), S, H, D, pr.qkv_stride};
  View<const T> k{static_cast<const T*>(kp), S, H, D, pr.qkv_stride};
  View<const T> v{static_cast<const T*>(vp), S, H, D, pr.qkv_stride};
  View<T> out{static_cast<T*>(outp), S, H, D, H * D};
  parallel_for(B * H, S * S * D, [&](int64_t pair_begin, int64_t pair_end) {
    std::vector<double> p(S), acc(D);
    for (int64_t pair = pair_begin; pair < pair_end; ++pair) {
      const int64_t b = pair / H, h = pair % H;
      for (int64_t t = 0; t < S; ++t) {
        double l = row_softmax(pr, q, k, b, h, t, p);
        lse[(b * H + h) * S + t] = float(l);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t s = 0; s <= t; ++s) {
          if (p[s] == 0) continue;
          const T* vr = v.at(b, s, h);
          for (int64_t d = 0; d < D; ++d) acc[d] += p[s] * double(vr[d]);
        }
        T* o = out.at(b, t, h);
        for (int64_t d = 0; d < D; ++d) o[d] = T(acc[d]);
      }
    }
  });
}

template <class T>
void backward_impl(const AttentionProblem& pr, const void* doutp, const void* qp, const void* kp,
                   const void* vp, void* dqp, void* dkp, void* dvp) {
  const int64_t B = pr.batch, S = pr.seq, H = pr.heads, D = pr.head_dim;
  View<const T> q{static_cast<const T*>(qp), S, H, D, pr.qkv_stride};
  View<const T> k{static_cast<const T*>(kp), S, H, D, pr.qkv_stride};
  View<const T> v{static_cast<const T*>(vp), S, H, D, pr.qkv_stride};
  View<const T> dout{static_cast<const T*>(doutp), S, H, D, H * D};
  View<T> dq{static_cast<T*>(dqp), S, H, D, pr.qkv_stride};
  View<T> dk{static_cast<T*>(dkp), S, H, D, pr.qkv_stride};
  View<T> dv{static_cast<T*>(dvp), S, H, D, pr.qkv_stride};
  parallel_for(B * H, S * S * D, [&](int64_t pair_begin, int64_t pair_end) {
    std::vector<double> p(S), dp(S), o(D), dqa(D), dka(size_t(S * D)), dva(size_t(S * D));
    for (int64_t pair = pair_begin; pair < pair_end; ++pair) {
      const int64_t b = pair / H, h = pair % H;
      std::fill(dka.begin(), dka.end(), 0.0);
      std::fill(dva.begin(), dva.end(), 0.0);
      for (int64_t t = 0; t < S; ++t) {
        row_softmax(pr, q, k, b, h, t, p);
        const T* g = dout.at(b, t, h);
        const T* qr = q.at(b, t, h);
        // o = sum p v (recomputed in double), delta = do . o
        std::fill(o.begin(), o.end(), 0.0);
        for (int64_t s = 0; s <= t; ++s) {
          if (p[s] == 0) continue;
          const T* vr = v.at(b, s, h);
          for (int64_t d = 0; d < D; ++d) o[d] += p[s] * double(vr[d]);
        }
        double delta = 0;
        for (int64_t d = 0; d < D; ++d) delta += double(g[d]) * o[d];
        std::fill(dqa.begin(), dqa.end(), 0.0);
        for (int64_t s = 0; s <= t; ++s) {
          if (p[s] == 0) continue;
          const T* vr = v.at(b, s, h);
          const T* kr = k.at(b, s, h);
          double dps = 0;
          for (int64_t d = 0; d < D; ++d) {
            dps += double(g[d]) * double(vr[d]);
            dva[s * D + d] += p[s] * double(g[d]);
          }
          double ds = p[s] * (dps - delta) * pr.scale;
          for (int64_t d = 0; d < D; ++d) {
            dqa[d] += ds * double(kr[d]);
            dka[s * D + d] += ds * double(qr[d]);
          }
        }
        T* dqr = dq.at(b, t, h);
        for (int64_t d = 0; d < D; ++d) dqr[d] = T(dqa[d]);
      }
      for (int64_t s = 0; s < S; ++s) {
        T* dkr = dk.at(b, s, h);
        T* dvr = dv.at(b, s, h);
        for (int64_t d = 0; d < D; ++d) {
          dkr[d] = T(dka[s * D + d]);
          dvr[d] = T(dva[s * D + d]);
        }
      }
    }
  });
}

}  // namespace

void attention_forward(const AttentionProblem& p, const void* q, const void* k, const void* v,
                       void* out, float* lse) {
  if (p.dtype == DType::f64) return forward_impl<double>(p, q, k, v, out, lse);
  if (p.dtype == DType::f32) return forward_impl<float>(p, q, k, v, out, lse);
  fail("attention_forward: the CPU reference takes f32 or f64, got {}", dtype_name(p.dtype));
}

void attention_backward(const AttentionProblem& p, const void* dout, const void* q,
                        const void* k, const void* v, const void* out, const float* lse,
                        void* dq, void* dk, void* dv) {
  (void)out;
  (void)lse;
  if (p.dtype == DType::f64) return backward_impl<double>(p, dout, q, k, v, dq, dk, dv);
  if (p.dtype == DType::f32) return backward_impl<float>(p, dout, q, k, v, dq, dk, dv);
  fail("attention_backward: the CPU reference takes f32 or f64, got {}", dtype_name(p.dtype));
}

}  // namespace coil::kernels::cpu
