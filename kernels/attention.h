// Causal multi-head attention (softmax(q k^T * scale + causal mask) v), flash style on the GPU.
//
// Layout: token-major, so that no transpose sits around the projections.
//   separate:  q, k, v  (B, T, H, hd), each contiguous; out (B, T, H, hd)
//   packed:    qkv      (B, T, 3, H, hd), contiguous: exactly the (B*T, 3*H*hd) output of one
//              fused projection reshaped; section 0 is q, 1 is k, 2 is v. out (B, T, H, hd),
//              which reshaped to (B*T, H*hd) is the input of the output projection.
// lse: (B, H, T) f32, the natural-log log-sum-exp of each query's scaled scores; backward
// recomputes the probabilities from it (no T x T matrix is ever stored on the GPU).
//
// Masking: query t sees keys s with s <= t and, when window > 0, t - s < window (the last
// `window` keys including itself). window == 0 means unlimited. scale <= 0 means 1/sqrt(hd).
// Documents (seq_idx, kernels/documents.h): query t also sees only keys s >= the start of its
// document (block-diagonal causal attention); the GPU kernels skip key tiles that lie wholly
// in earlier documents, so packed short documents cost less than one long one.
//
// Devices and dtypes: CPU reference in f32 and f64 (plain softmax attention, O(T^2) memory).
// CUDA: bf16 is the fast path (mma.sync m16n8k16, or on sm_90 wgmma/TMA kernels: see
// AttentionKernel below; fp32 accumulation and softmax); f32 inputs
// are converted to bf16, computed there and the results converted back, so an f32 call has
// bf16 accuracy. CUDA head dims: 64, 96 and 128; any sequence length >= 1.
// Backward on the GPU is deterministic (no floating-point atomics): dK/dV and dQ are
// computed by two separate passes.
#pragma once
#include <string>

#include "core/tensor.h"

namespace coil::kernels {

struct AttentionOptions {
  int64_t window = 0;  // 0: unlimited causal attention
  double scale = 0;    // <= 0: 1/sqrt(head_dim)
  Tensor seq_idx;      // optional (B, T) i32: documents, on the inputs' device
};

struct AttentionOutput {
  Tensor out;  // (B, T, H, hd), the inputs' dtype
  Tensor lse;  // (B, H, T) f32
};

struct AttentionGrads {
  Tensor dq, dk, dv;  // each (B, T, H, hd)
};

// Separate q, k, v.
AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& options = {});
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  const AttentionOptions& options = {});

// Packed qkv (B, T, 3, H, hd). The backward returns dqkv in the same packed layout.
AttentionOutput attention_forward_packed(const Tensor& qkv, const AttentionOptions& options = {});
Tensor attention_backward_packed(const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                 const Tensor& lse, const AttentionOptions& options = {});

// The head dims the CUDA kernels are built for (64, 96, 128), and that list in words for
// error messages.
bool attention_cuda_supports_head_dim(int64_t head_dim);
const char* attention_cuda_head_dims();

// Launch settings of the CUDA kernels (docs/ATTENTION.md): warps per block of the forward,
// dK/dV and dQ kernels (4 or 8) and query rows per warp of the forward (16 or 32; 32 runs 4
// warps and applies at hd 64 and 96 only, there are no registers for it at 128).
struct AttentionLaunch {
  int fwd_warps = 4, fwd_rows = 32, dkdv_warps = 4, dq_warps = 4;
};
// The settings every launch uses: the defaults above, overridden by the environment variables
// COIL_ATTN_FWD_WARPS, COIL_ATTN_FWD_ROWS, COIL_ATTN_DKDV_WARPS and COIL_ATTN_DQ_WARPS, read
// once, at the first call (a value other than the alternative, 8 or 16, selects the default).
const AttentionLaunch& attention_launch();
// Replaces them (tests and bench_attention --tune time every setting); values outside the
// choices above are an error naming them.
void set_attention_launch(const AttentionLaunch& launch);
// Which CUDA kernels run, chosen separately for the forward and for the backward:
//   automatic: the Hopper kernels (kernels/cuda/attention_hopper.cu, the forward, and
//              kernels/cuda/attention_hopper_backward.cu, dK/dV and dQ: wgmma, TMA, warp
//              specialization) where they apply (attention_hopper_unsupported is ""), else the
//              portable mma.sync kernels;
//   hopper:    the Hopper kernels, or an error saying why they cannot run;
//   portable:  the mma.sync kernels (kernels/cuda/attention.cu) on every GPU.
// Both backwards are deterministic. The start values are the environment variables
// COIL_ATTN_FWD_KERNEL and COIL_ATTN_BWD_KERNEL (auto, hopper or portable; unset: auto; anything
// else is an error), each read once at its first use; tests and benchmarks switch with the
// setters.
enum class AttentionKernel { automatic, hopper, portable };
AttentionKernel attention_forward_kernel();
void set_attention_forward_kernel(AttentionKernel kernel);
AttentionKernel attention_backward_kernel();
void set_attention_backward_kernel(AttentionKernel kernel);
// Why the Hopper kernels (forward and backward alike) cannot run at this head dim on the
// current device, in words ("" when they can): no usable GPU, not an sm_90 GPU, a build without
// sm_90a code (configure with -DCMAKE_CUDA_ARCHITECTURES=90a), a head dim other than 64, 96
// (run as zero-padded 128) and 128, or a build without CUDA.
std::string attention_hopper_unsupported(int64_t head_dim);

// Raw views shared by the CPU and CUDA implementations: q/k/v (and dq/dk/dv) are given by a
// base pointer each and one token stride (elements between token t and t+1 of one batch row);
// heads are hd apart, batch rows T*stride apart. out/dout are (B, T, H, hd) contiguous.
struct AttentionProblem {
  int64_t batch = 0, seq = 0, heads = 0, head_dim = 0;
  int64_t window = 0;
  double scale = 0;         // resolved (> 0)
  int64_t qkv_stride = 0;   // elements between consecutive tokens in q, k, v, dq, dk, dv
  const int32_t* doc_start = nullptr;  // optional (B, T): the first key each query may see
                                       // (kernels::document_starts), on the device
  DType dtype = DType::f32;
  Device device;
};

namespace cpu {
// out, lse must be allocated; pointers are of problem.dtype (f32 or f64).
void attention_forward(const AttentionProblem& p, const void* q, const void* k, const void* v,
                       void* out, float* lse);
// dq, dk, dv are overwritten.
void attention_backward(const AttentionProblem& p, const void* dout, const void* q,
                        const void* k, const void* v, const void* out, const float* lse,
                        void* dq, void* dk, void* dv);
}  // namespace cpu

namespace cuda {
// bf16 pointers. lse f32 (B, H, T).
void attention_forward(const AttentionProblem& p, const void* q, const void* k, const void* v,
                       void* out, float* lse);
// dq, dk, dv are overwritten (bf16). Uses a temporary f32 buffer of B*H*T (D = rowsum(dO*O)).
void attention_backward(const AttentionProblem& p, const void* dout, const void* q,
                        const void* k, const void* v, const void* out, const float* lse,
                        void* dq, void* dk, void* dv);
// The Hopper kernels. attention_forward_hopper (kernels/cuda/attention_hopper.cu): same
// contract as attention_forward, which calls it as attention_forward_kernel() says.
// attention_backward_hopper (kernels/cuda/attention_hopper_backward.cu): dK/dV and dQ from
// delta = rowsum(dO * O) (B, H, T) f32, which attention_backward computes first and then calls
// it as attention_backward_kernel() says.
std::string attention_hopper_unsupported(int64_t head_dim);
void attention_forward_hopper(const AttentionProblem& p, const void* q, const void* k,
                              const void* v, void* out, float* lse);
void attention_backward_hopper(const AttentionProblem& p, const void* dout, const void* q,
                               const void* k, const void* v, const float* lse, const float* delta,
                               void* dq, void* dk, void* dv);
}  // namespace cuda

}  // namespace coil::kernels
