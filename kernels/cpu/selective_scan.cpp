// CPU reference of the selective scan: plain loops over (b, d), sequential in time, written
// from the math in kernels/selective_scan.h (channel-last layouts: u[b, t, d], B[b, t, n]). The backward recomputes the forward, keeping every
// state h_t of one (b, d) row, then runs the reverse-time recurrence
//   dh_t = C_t * dy_t + exp(dt_{t+1} A) * dh_{t+1}        (dh_L = grad_final_state)
// from which, with a_t = exp(dt_t A) and y_t the pre-gate output:
//   dy_t   = dout_t * silu(z_t),   dz_t = dout_t * y_t * silu'(z_t)
//   du_t   = sum_n dh_t[n] dt_t B_t[n] + D dy_t
//   ddt_t  = sum_n dh_t[n] (A[n] a_t[n] h_{t-1}[n] + B_t[n] u_t)   (times softplus' if used)
//   dA[n] += dh_t[n] a_t[n] h_{t-1}[n] dt_t,   dB_t[n] += dh_t[n] dt_t u_t,
//   dC_t[n] += dy_t h_t[n],   dD += dy_t u_t,   dh_{-1} = a_0 dh_0 (the initial state's gradient)
// Rows (b, d) run on the CPU threads. The backward's blocks hold whole batch rows b (dB, dC
// sum over the channels of one b); dA, dD and the delta bias's gradient sum over b, so each b
// keeps its own partial sums, added in b order at the end: the same bits at any thread count.
// At a document start t (seq_idx) h_{t-1} is replaced by 0: the A h_{t-1} terms vanish and
// dh_{t-1} gets nothing from step t.
#include <cmath>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/documents.h"
#include "kernels/selective_scan.h"

namespace coil::kernels::cpu {
namespace {

template <class T>
T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}
template <class T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <class T>
T* opt(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

void selective_scan_forward(const ScanArgs& a, const ScanResult& r) {
  dispatch_cpu_float("selective_scan_forward", a.u, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = a.u.size(0), nl = a.u.size(1), nd = a.u.size(2), nn = a.A.size(1);
    const T *u = a.u.data<T>(), *delta = a.delta.data<T>(), *A = a.A.data<T>(), *B = a.B.data<T>(),
            *C = a.C.data<T>();
    const T *D = opt<T>(a.D), *z = opt<T>(a.z), *bias = opt<T>(a.delta_bias), *h0 = opt<T>(a.initial_state);
    const int32_t* seq = a.seq_idx.defined() ? a.seq_idx.data<int32_t>() : nullptr;
    T* out = r.out.data<T>();
    T* hl = r.final_state.data<T>();
    parallel_for(nb * nd, nl * nn, [&](int64_t row_begin, int64_t row_end) {
      std::vector<T> h(static_cast<size_t>(nn));
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / nd, d = row % nd;
        for (int64_t n = 0; n < nn; ++n) h[n] = h0 ? h0[(b * nd + d) * nn + n] : T(0);
        for (int64_t t = 0; t < nl; ++t) {
          const int64_t i = (b * nl + t) * nd + d, bt = (b * nl + t) * nn;
          T dt = delta[i] + (bias ? bias[d] : T(0));
          if (a.delta_softplus) dt = softplus(dt);
          const bool reset = seq && starts_document(seq + b * nl, t);
          T y = 0;
          for (int64_t n = 0; n < nn; ++n) {
            const T carried = reset ? T(0) : std::exp(dt * A[d * nn + n]) * h[n];
            h[n] = carried + dt * B[bt + n] * u[i];
            y += C[bt + n] * h[n];
          }
          if (D) y += D[d] * u[i];
          if (z) y *= z[i] * sigmoid(z[i]);
          out[i] = y;
        }
        for (int64_t n = 0; n < nn; ++n) hl[(b * nd + d) * nn + n] = h[n];
      }
    });
  });
}

void selective_scan_backward(const ScanArgs& a, const Tensor& grad_out, const Tensor& grad_final_state,
                             const ScanGrads& g) {
  dispatch_cpu_float("selective_scan_backward", a.u, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t nb = a.u.size(0), nl = a.u.size(1), nd = a.u.size(2), nn = a.A.size(1);
    const T *u = a.u.data<T>(), *delta = a.delta.data<T>(), *A = a.A.data<T>(), *B = a.B.data<T>(),
            *C = a.C.data<T>();
    const T *D = opt<T>(a.D), *z = opt<T>(a.z), *bias = opt<T>(a.delta_bias), *h0 = opt<T>(a.initial_state);
    const int32_t* seq = a.seq_idx.defined() ? a.seq_idx.data<int32_t>() : nullptr;
    const T* dout = grad_out.data<T>();
    const T* dhl = opt<T>(grad_final_state);
    T *du = g.du.data<T>(), *ddelta = g.ddelta.data<T>(), *dA = g.dA.data<T>(), *dB = g.dB.data<T>(),
      *dC = g.dC.data<T>();
    T *dD = opt<T>(g.dD), *dz = opt<T>(g.dz), *dbias = opt<T>(g.ddelta_bias), *dh0 = opt<T>(g.dinitial_state);
    for (Tensor t : {g.dA, g.dB, g.dC, g.dD, g.ddelta_bias})
      if (t.defined()) t.zero_();

    // Per batch row b: its partial sums of dA [D, N], dD [D], d(delta bias) [D].
    std::vector<T> dA_b(size_t(nb * nd * nn)), dD_b(dD ? size_t(nb * nd) : 0), dbias_b(dbias ? size_t(nb * nd) : 0);
    const int64_t batch_rows_per_block = std::max<int64_t>(1, kWorkPerBlock / std::max<int64_t>(nd * nl * nn, 1));
    parallel_blocks(nb * nd, batch_rows_per_block * nd, [&](int64_t row_begin, int64_t row_end) {
      // hs[t + 1] = h after step t; hs[0] = the initial state. hprev(t): the state step t
      // starts from (0 at a document start).
      std::vector<T> hs(static_cast<size_t>((nl + 1) * nn)), dts(static_cast<size_t>(nl)), dh(static_cast<size_t>(nn));
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t b = row / nd, d = row % nd;
        T *dA_p = dA_b.data() + b * nd * nn, *dD_p = dD ? dD_b.data() + b * nd : nullptr,
          *dbias_p = dbias ? dbias_b.data() + b * nd : nullptr;
        for (int64_t n = 0; n < nn; ++n) hs[n] = h0 ? h0[(b * nd + d) * nn + n] : T(0);
        for (int64_t t = 0; t < nl; ++t) {
          const int64_t i = (b * nl + t) * nd + d, bt = (b * nl + t) * nn;
          T dt = delta[i] + (bias ? bias[d] : T(0));
          if (a.delta_softplus) dt = softplus(dt);
          dts[t] = dt;
          const bool reset = seq && starts_document(seq + b * nl, t);
          for (int64_t n = 0; n < nn; ++n)
            hs[(t + 1) * nn + n] =
                (reset ? T(0) : std::exp(dt * A[d * nn + n]) * hs[t * nn + n]) + dt * B[bt + n] * u[i];
        }
        for (int64_t n = 0; n < nn; ++n) dh[n] = dhl ? dhl[(b * nd + d) * nn + n] : T(0);
        for (int64_t t = nl - 1; t >= 0; --t) {
          const int64_t i = (b * nl + t) * nd + d, bt = (b * nl + t) * nn;
          const T dt = dts[t], ut = u[i];
          const bool reset = seq && starts_document(seq + b * nl, t);
          T y = D ? D[d] * ut : T(0);
          for (int64_t n = 0; n < nn; ++n) y += C[bt + n] * hs[(t + 1) * nn + n];
          T dy = dout[i];
          if (z) {
            const T zt = z[i], s = sigmoid(zt);
            dz[i] = dout[i] * y * s * (T(1) + zt * (T(1) - s));
            dy = dout[i] * zt * s;
          }
          T dut = D ? D[d] * dy : T(0), ddt = 0;
          if (dD_p) dD_p[d] += dy * ut;
          for (int64_t n = 0; n < nn; ++n) {
            const int64_t bi = bt + n;
            const T an = std::exp(dt * A[d * nn + n]);
            const T hprev = reset ? T(0) : hs[t * nn + n];
            dC[bi] += dy * hs[(t + 1) * nn + n];
            const T dhn = dh[n] + C[bi] * dy;  // dh_t: the carried part plus this step's readout
            dut += dhn * dt * B[bi];
            ddt += dhn * (A[d * nn + n] * an * hprev + B[bi] * ut);
            dA_p[d * nn + n] += dhn * an * hprev * dt;
            dB[bi] += dhn * dt * ut;
            dh[n] = reset ? T(0) : an * dhn;  // carried to step t - 1
          }
          du[i] = dut;
          if (a.delta_softplus) ddt *= sigmoid(delta[i] + (bias ? bias[d] : T(0)));
          ddelta[i] = ddt;
          if (dbias_p) dbias_p[d] += ddt;
        }
        if (dh0)
          for (int64_t n = 0; n < nn; ++n) dh0[(b * nd + d) * nn + n] = dh[n];
      }
    });
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t j = 0; j < nd * nn; ++j) dA[j] += dA_b[size_t(b * nd * nn + j)];
      for (int64_t d = 0; d < nd; ++d) {
        if (dD) dD[d] += dD_b[size_t(b * nd + d)];
        if (dbias) dbias[d] += dbias_b[size_t(b * nd + d)];
      }
    }
  });
}

}  // namespace coil::kernels::cpu
