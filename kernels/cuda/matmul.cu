// Matrix products through cuBLASLt.
//
// Row-major to column-major: a row-major [R, C] matrix is, read as column-major, its
// transpose [C, R] with leading dimension C. So the row-major product C = opA(a) @ opB(b)
// ([M, N]) is computed as the column-major product C^T = opB(b)^T @ opA(a)^T ([N, M]):
// cuBLASLt's "A" is our b and its "B" is our a, with the same transpose flags, and its D is
// our C read as an [N, M] column-major matrix (leading dimension N). The bias epilogue adds a
// vector along D's rows, which are our columns: exactly bias[n] added to every row of C.
// The GELU epilogues (GemmEpilogue) read or write an aux matrix laid out as D (our [M, N],
// leading dimension N): GELU_AUX(_BIAS) writes gelu's input there, DGELU reads it.
//
// Precision: bf16 A/B/C/D with CUBLAS_COMPUTE_32F (fp32 accumulation, fp32 alpha/beta), or
// f32 with CUBLAS_COMPUTE_32F (no TF32: the fp32 path is the debugging reference), or bf16 A/B
// with f32 C/D (a sum of products kept in fp32, e.g. a weight gradient over chunks of rows).
// Accumulating (beta = 1) reads C = D before writing D: the sum costs one extra read of the
// output instead of a separate add kernel (which reads both and writes one).
//
// One cuBLASLt handle and one 32 MiB workspace per device, created on first use and kept for
// the life of the process; the algorithm chosen by the heuristic is cached per problem
// (shape, transposes, dtype, epilogue, pointer alignment), so a training step issues no
// heuristic queries after the first. Everything runs on coil::cuda::compute_stream(); there
// is no host synchronization.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "core/allocator.h"
#include "core/cuda.h"
#include "kernels/matmul.h"

#define COIL_CUBLAS_CHECK(call, what)                                                                 \
  do {                                                                                                \
    cublasStatus_t coil_status_ = (call);                                                             \
    if (coil_status_ != CUBLAS_STATUS_SUCCESS)                                                        \
      ::coil::fail("cuBLASLt error {} ({}) in {} for {}", cublasLtGetStatusName(coil_status_),       \
                   cublasLtGetStatusString(coil_status_), #call, what);                               \
  } while (0)

namespace coil::kernels::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;

// (batch, M, N, K, ta, tb, dtype, out dtype, bias, epilogue, alignment of a, b, out, bias, aux)
using AlgoKey = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool, int, int, bool, int, int, int, int, int, int>;

struct LtContext {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::mutex algos_mutex;
  std::map<AlgoKey, cublasLtMatmulAlgo_t> algos;
};

// The per-device context, created lazily and never destroyed (it lives as long as the
// process; the workspace is one block of the caching allocator).
LtContext& context(int device) {
  static std::mutex mutex;
  static std::vector<LtContext*> contexts;
  std::lock_guard<std::mutex> lock(mutex);
  if (contexts.empty()) contexts.assign(size_t(cuda_device_count()), nullptr);
  COIL_CHECK(device >= 0 && size_t(device) < contexts.size(), "matmul: no CUDA device {}", device);
  LtContext*& ctx = contexts[size_t(device)];
  if (!ctx) {
    auto* c = new LtContext;
    COIL_CUBLAS_CHECK(cublasLtCreate(&c->handle), "the cuBLASLt handle");
    c->workspace = device_alloc(Device::cuda(device), kWorkspaceBytes);
    ctx = c;
  }
  return *ctx;
}

// The largest power of two (up to 256) that divides the address: the alignment cuBLASLt
// may assume. Views (narrow0, view_bytes) can start anywhere.
int alignment(const void* p) {
  auto v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && v % uintptr_t(a) != 0) a /= 2;
  return a;
}

cudaDataType_t cuda_type(const Tensor& t) {
  switch (t.dtype()) {
    case DType::f32: return CUDA_R_32F;
    case DType::bf16: return CUDA_R_16BF;
    default: fail("matmul: the GPU path takes f32 or bf16, got {}", describe(t));
  }
}

// RAII holders for the descriptors of one call.
struct Layout {
  cublasLtMatrixLayout_t desc = nullptr;
  Layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
    COIL_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&desc, type, uint64_t(rows), uint64_t(cols), ld), "a layout");
    if (batch > 1) {
      int32_t count = int32_t(batch);
      COIL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(desc, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                         sizeof(count)),
                        "the batch count");
      COIL_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(desc, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                         &stride, sizeof(stride)),
                        "the batch stride");
    }
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(desc); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

struct OpDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  OpDesc() { COIL_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "the matmul"); }
  ~OpDesc() { cublasLtMatmulDescDestroy(desc); }
  template <class V>
  void set(cublasLtMatmulDescAttributes_t attr, const V& value) {
    COIL_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)), "a matmul attribute");
  }
  OpDesc(const OpDesc&) = delete;
  OpDesc& operator=(const OpDesc&) = delete;
};

struct Preference {
  cublasLtMatmulPreference_t desc = nullptr;
  Preference() { COIL_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&desc), "the preference"); }
  ~Preference() { cublasLtMatmulPreferenceDestroy(desc); }
  template <class V>
  void set(cublasLtMatmulPreferenceAttributes_t attr, const V& value) {
    COIL_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(desc, attr, &value, sizeof(value)), "a preference");
  }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
};

}  // namespace

void matmul(const Tensor& a, const Tensor& b, const Tensor& bias, const Tensor& out, const GemmShape& g,
            GemmEpilogue epilogue, const Tensor& aux, bool accumulate) {
  const cudaDataType_t type = cuda_type(a), out_type = cuda_type(out);
  COIL_CHECK(out_type == type || (type == CUDA_R_16BF && out_type == CUDA_R_32F),
             "matmul: out {} must be {}'s dtype, or f32 for bf16 operands", describe(out), describe(a));
  COIL_CHECK(!(bias.defined() && (accumulate || out_type != type)),
             "matmul: a bias goes with a plain product of out's dtype, not with accumulate or an f32 out {}",
             describe(out));
  COIL_CHECK(epilogue == GemmEpilogue::plain || (!accumulate && out_type == type),
             "matmul: the GELU epilogues go with a product of out's dtype, not with accumulate or an f32 out {}",
             describe(out));
  const int64_t M = g.M, N = g.N, K = g.K;
  const char* epilogue_name = epilogue == GemmEpilogue::gelu_aux ? ", gelu" : epilogue == GemmEpilogue::dgelu ? ", dgelu" : "";
  auto what = [&] {
    return fmt::format("matmul a {}{} @ b {}{}{}{} {} {}", describe(a), g.transpose_a ? "^T" : "", describe(b),
                       g.transpose_b ? "^T" : "", bias.defined() ? " + bias" : "", epilogue_name,
                       accumulate ? "+=" : "->", describe(out));
  };
  if (epilogue != GemmEpilogue::plain)
    COIL_CHECK(g.batch == 1 && N % 8 == 0 && aux.defined() && aux.numel() == M * N && aux.dtype() == out.dtype(),
               "{}: the GELU epilogues take 2-d products with N a multiple of 8 and aux [M, N] in the output's "
               "dtype, got aux {}", what(), aux.defined() ? describe(aux) : std::string("undefined"));
  LtContext& ctx = context(a.device().index);

  OpDesc op;
  // cuBLASLt A = our b, cuBLASLt B = our a (see the top of the file).
  cublasOperation_t op_a = g.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_b = g.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  op.set(CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  op.set(CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  cublasLtEpilogue_t lt_epilogue = bias.defined() ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  if (epilogue == GemmEpilogue::gelu_aux)
    lt_epilogue = bias.defined() ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
  if (epilogue == GemmEpilogue::dgelu) {
    COIL_CHECK(!bias.defined(), "{}: the dgelu epilogue takes no bias", what());
    lt_epilogue = CUBLASLT_EPILOGUE_DGELU;
  }
  if (lt_epilogue != CUBLASLT_EPILOGUE_DEFAULT) op.set(CUBLASLT_MATMUL_DESC_EPILOGUE, lt_epilogue);
  if (bias.defined()) {
    const void* bias_ptr = bias.raw();
    op.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias_ptr);
    op.set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, type);
  }
  if (epilogue != GemmEpilogue::plain) {
    const void* aux_ptr = aux.raw();
    op.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux_ptr);
    op.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, N);
  }

  // our b: [K, N] row-major = column-major [N, K] (ld N); transposed: [N, K] = col-major [K, N] (ld K).
  Layout la(type, g.transpose_b ? K : N, g.transpose_b ? N : K, g.transpose_b ? K : N, g.batch, K * N);
  // our a: [M, K] row-major = column-major [K, M] (ld K); transposed: [K, M] = col-major [M, K] (ld M).
  Layout lb(type, g.transpose_a ? M : K, g.transpose_a ? K : M, g.transpose_a ? M : K, g.batch, M * K);
  // our out: [M, N] row-major = column-major [N, M] (ld N).
  Layout ld(out_type, N, M, N, g.batch, M * N);

  int align_a = alignment(a.raw()), align_b = alignment(b.raw()), align_d = alignment(out.raw());
  int align_bias = bias.defined() ? alignment(bias.raw()) : 0;
  int align_aux = epilogue != GemmEpilogue::plain ? alignment(aux.raw()) : 0;
  AlgoKey key{g.batch, M, N, K, g.transpose_a, g.transpose_b, int(type), int(out_type), bias.defined(),
              int(epilogue), align_a, align_b, align_d, align_bias, align_aux};
  cublasLtMatmulAlgo_t algo;
  std::unique_lock<std::mutex> lock(ctx.algos_mutex);
  auto found = ctx.algos.find(key);
  if (found != ctx.algos.end()) {
    algo = found->second;
  } else {
    Preference pref;
    uint64_t ws = kWorkspaceBytes;
    pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, ws);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(align_b));
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t(align_a));
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, uint32_t(align_d));
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, uint32_t(align_d));
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    COIL_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx.handle, op.desc, la.desc, lb.desc, ld.desc, ld.desc,
                                                     pref.desc, 1, &result, &count),
                      what());
    COIL_CHECK(count > 0, "{}: cuBLASLt found no algorithm (alignments a {}, b {}, out {})", what(), align_a,
               align_b, align_d);
    algo = result.algo;
    ctx.algos.emplace(key, algo);
  }
  lock.unlock();

  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  COIL_CUBLAS_CHECK(cublasLtMatmul(ctx.handle, op.desc, &alpha, b.raw(), la.desc, a.raw(), lb.desc, &beta,
                                   out.raw(), ld.desc, out.raw(), ld.desc, &algo, ctx.workspace,
                                   kWorkspaceBytes, coil::cuda::compute_stream()),
                    what());
}

}  // namespace coil::kernels::cuda
