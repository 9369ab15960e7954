// CPU reference of causal attention: plain softmax attention, one (batch, head, query) row at
// a time, written from the math (with documents a query sees only keys of its own one). The
// backward recomputes the probabilities from q and k (it does not use lse, so it stays exact
// in f64 for gradient checks):
//   s_j = scale * q.k_j (j visible), p = softmax(s), o = sum_j p_j v_j
//   dv_j += p_j do;  dp_j = do.v_j;  ds_j = p_j (dp_j - do.o);  dq = scale sum_j ds_j k_j;
//   dk_j += scale ds_j q
// On the CPU threads: the forward's rows are independent; the backward takes one (batch, head)
// pair at a time in two passes, the rows (probabilities p, ds = p (dp - do.o) scale and dq,
// kept for the pair) and then the keys (dk, dv: sums over the rows in row order, the order
// one thread would take). Each block writes only its own outputs, so any thread count gives
// the same bits; one long sequence uses every thread.
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
  // Rows (b, h, t), t fastest.
  parallel_for(B * H * S, S * D, [&](int64_t row_begin, int64_t row_end) {
    std::vector<double> p(S), acc(D);
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int64_t b = row / (H * S), h = row / S % H, t = row % S;
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
  // Row t's p and ds for keys s <= t, at t (t + 1) / 2 + s.
  std::vector<double> p_all(size_t(S * (S + 1) / 2)), ds_all(p_all.size());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      parallel_for(S, S * D, [&](int64_t t_begin, int64_t t_end) {
        std::vector<double> p(S), o(D), dqa(D);
        for (int64_t t = t_begin; t < t_end; ++t) {
          row_softmax(pr, q, k, b, h, t, p);
          const T* g = dout.at(b, t, h);
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
          double* pt = p_all.data() + t * (t + 1) / 2;
          double* dst = ds_all.data() + t * (t + 1) / 2;
          for (int64_t s = 0; s <= t; ++s) {
            pt[s] = p[s];
            if (p[s] == 0) continue;
            const T* vr = v.at(b, s, h);
            const T* kr = k.at(b, s, h);
            double dps = 0;
            for (int64_t d = 0; d < D; ++d) dps += double(g[d]) * double(vr[d]);
            dst[s] = p[s] * (dps - delta) * pr.scale;
            for (int64_t d = 0; d < D; ++d) dqa[d] += dst[s] * double(kr[d]);
          }
          T* dqr = dq.at(b, t, h);
          for (int64_t d = 0; d < D; ++d) dqr[d] = T(dqa[d]);
        }
      });
      parallel_for(S, S * D, [&](int64_t s_begin, int64_t s_end) {
        std::vector<double> dka(D), dva(D);
        for (int64_t s = s_begin; s < s_end; ++s) {
          std::fill(dka.begin(), dka.end(), 0.0);
          std::fill(dva.begin(), dva.end(), 0.0);
          for (int64_t t = s; t < S; ++t) {
            const double pts = p_all[size_t(t * (t + 1) / 2 + s)];
            if (pts == 0) continue;
            const double ds = ds_all[size_t(t * (t + 1) / 2 + s)];
            const T* g = dout.at(b, t, h);
            const T* qr = q.at(b, t, h);
            for (int64_t d = 0; d < D; ++d) {
              dva[d] += pts * double(g[d]);
              dka[d] += ds * double(qr[d]);
            }
          }
          T* dkr = dk.at(b, s, h);
          T* dvr = dv.at(b, s, h);
          for (int64_t d = 0; d < D; ++d) {
            dkr[d] = T(dka[d]);
            dvr[d] = T(dva[d]);
          }
        }
      });
    }
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
