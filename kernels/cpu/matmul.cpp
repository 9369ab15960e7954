// CPU reference for matrix products: plain loops, accumulated in double.
#include <vector>

#include "kernels/matmul.h"

namespace coil::kernels::cpu {

void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g) {
  dispatch_cpu_float("matmul", a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t M = g.M, N = g.N, K = g.K;
    const T* bias_p = bias.defined() ? bias.data<T>() : nullptr;
    std::vector<double> acc(static_cast<size_t>(N));
    for (int64_t p = 0; p < g.batch; ++p) {
      const T* A = a.data<T>() + p * M * K;
      const T* B = b.data<T>() + p * K * N;
      T* C = out.data<T>() + p * M * N;
      for (int64_t m = 0; m < M; ++m) {
        // C[m, n] = sum_k opA[m, k] * opB[k, n], opA[m, k] = ta ? A[k, m] : A[m, k],
        // opB[k, n] = tb ? B[n, k] : B[k, n].
        for (int64_t n = 0; n < N; ++n) acc[size_t(n)] = bias_p ? double(bias_p[n]) : 0.0;
        for (int64_t k = 0; k < K; ++k) {
          double av = double(g.transpose_a ? A[k * M + m] : A[m * K + k]);
          if (g.transpose_b)
            for (int64_t n = 0; n < N; ++n) acc[size_t(n)] += av * double(B[n * K + k]);
          else
            for (int64_t n = 0; n < N; ++n) acc[size_t(n)] += av * double(B[k * N + n]);
        }
        for (int64_t n = 0; n < N; ++n) C[m * N + n] = T(acc[size_t(n)]);
      }
    }
  });
}

}  // namespace coil::kernels::cpu
