// CPU matrix products. The reference: plain loops accumulated in double. The fast path: the
// same product cut into fixed blocks of output rows on the CPU threads, each block through
// OpenBLAS (sgemm/dgemm, one BLAS thread per call) when coil is built with it, else through
// the reference loops (then bitwise the reference).
#include <algorithm>
#include <string>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "kernels/matmul.h"

#ifdef COIL_BLAS
#include <cblas.h>
#endif

namespace coil::kernels::cpu {
namespace {

// Rows of op(a) @ op(b) (+ bias) per block: enough for BLAS to amortize packing b.
constexpr int64_t kRowsPerBlock = 64;

// The operands of product p: a [M, K] (transposed: [K, M]), b [K, N] (transposed: [N, K]), out [M, N].
template <class T>
struct Operands {
  const T *A, *B, *bias;
  T* C;
};

template <class T>
Operands<T> operands(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g,
                     int64_t p) {
  return {a.data<T>() + p * g.M * g.K, b.data<T>() + p * g.K * g.N, bias.defined() ? bias.data<T>() : nullptr,
          out.data<T>() + p * g.M * g.N};
}

// Rows [m0, m1) of one product by the plain loops.
template <class T>
void reference_rows(const Operands<T>& o, const GemmShape& g, int64_t m0, int64_t m1) {
  const int64_t M = g.M, N = g.N, K = g.K;
  std::vector<double> acc(static_cast<size_t>(N));
  for (int64_t m = m0; m < m1; ++m) {
    // C[m, n] = sum_k opA[m, k] * opB[k, n], opA[m, k] = ta ? A[k, m] : A[m, k],
    // opB[k, n] = tb ? B[n, k] : B[k, n].
    for (int64_t n = 0; n < N; ++n) acc[size_t(n)] = o.bias ? double(o.bias[n]) : 0.0;
    for (int64_t k = 0; k < K; ++k) {
      double av = double(g.transpose_a ? o.A[k * M + m] : o.A[m * K + k]);
      if (g.transpose_b)
        for (int64_t n = 0; n < N; ++n) acc[size_t(n)] += av * double(o.B[n * K + k]);
      else
        for (int64_t n = 0; n < N; ++n) acc[size_t(n)] += av * double(o.B[k * N + n]);
    }
    for (int64_t n = 0; n < N; ++n) o.C[m * N + n] = T(acc[size_t(n)]);
  }
}

#ifdef COIL_BLAS
// One BLAS thread per call: the blocks are the parallelism, so the result does not depend on
// how many threads run them (OpenBLAS would otherwise start its own).
void use_one_blas_thread() {
  static const bool done = (openblas_set_num_threads(1), true);
  (void)done;
}

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, blasint(m), blasint(n), blasint(k), 1.0f, a, blasint(lda), b, blasint(ldb), beta,
              c, blasint(ldc));
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
          const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, blasint(m), blasint(n), blasint(k), 1.0, a, blasint(lda), b, blasint(ldb), beta,
              c, blasint(ldc));
}

// Rows [m0, m1) of one product through BLAS: C rows start as the bias (beta 1) or are
// overwritten (beta 0).
template <class T>
void blas_rows(const Operands<T>& o, const GemmShape& g, int64_t m0, int64_t m1) {
  const int64_t M = g.M, N = g.N, K = g.K;
  T* C = o.C + m0 * N;
  if (o.bias)
    for (int64_t m = m0; m < m1; ++m) std::copy(o.bias, o.bias + N, o.C + m * N);
  const T* A = g.transpose_a ? o.A + m0 : o.A + m0 * K;
  gemm(g.transpose_a ? CblasTrans : CblasNoTrans, g.transpose_b ? CblasTrans : CblasNoTrans, m1 - m0, N, K, A,
       g.transpose_a ? M : K, o.B, g.transpose_b ? K : N, o.bias ? T(1) : T(0), C, N);
}
#endif

}  // namespace

std::string blas_name() {
#ifdef COIL_BLAS
  return std::string("OpenBLAS (") + openblas_get_corename() + " kernels)";
#else
  return "";
#endif
}

void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g) {
  dispatch_cpu_float("matmul", a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    const int64_t blocks_per_product = (g.M + kRowsPerBlock - 1) / kRowsPerBlock;
#ifdef COIL_BLAS
    use_one_blas_thread();
#endif
    // Item i: rows [r * kRowsPerBlock, ...) of product p, i = p * blocks_per_product + r. Every
    // item is computed the same way whichever thread runs it.
    parallel_for(g.batch * blocks_per_product, kRowsPerBlock * g.N * g.K, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t p = i / blocks_per_product, m0 = (i % blocks_per_product) * kRowsPerBlock;
        const int64_t m1 = std::min(g.M, m0 + kRowsPerBlock);
#ifdef COIL_BLAS
        blas_rows(operands<T>(a, b, bias, out, g, p), g, m0, m1);
#else
        reference_rows(operands<T>(a, b, bias, out, g, p), g, m0, m1);
#endif
      }
    });
  });
}

void matmul_reference(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g) {
  dispatch_cpu_float("matmul", a, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    for (int64_t p = 0; p < g.batch; ++p) reference_rows(operands<T>(a, b, bias, out, g, p), g, 0, g.M);
  });
}

}  // namespace coil::kernels::cpu
