#include "kernels/attention.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/documents.h"

namespace coil::kernels {
namespace {

void check_device_dtype(const char* op, const Tensor& t) {
  if (t.device().is_cpu()) {
    check_dtype(op, t, {DType::f32, DType::f64});
  } else {
    check_dtype(op, t, {DType::f32, DType::bf16});
    COIL_CHECK(attention_cuda_supports_head_dim(t.size(-1)),
               "{}: head dim {} is not supported on CUDA (supported: {}); tensor {}", op,
               t.size(-1), attention_cuda_head_dims(), describe(t));
  }
#ifndef COIL_CUDA
  if (t.device().is_cuda()) fail("{}: {} needs CUDA, but coil was built without it", op, describe(t));
#endif
}

AttentionProblem make_problem(const char* op, int64_t B, int64_t T, int64_t H, int64_t hd,
                              int64_t stride, const Tensor& like, const AttentionOptions& o) {
  COIL_CHECK(B >= 1 && T >= 1 && H >= 1 && hd >= 1, "{}: empty attention problem: {}", op,
             describe(like));
  COIL_CHECK(hd % 2 == 0, "{}: head dim must be even, got {} ({})", op, hd, describe(like));
  COIL_CHECK(o.window >= 0, "{}: window must be >= 0 (0 = unlimited), got {}", op, o.window);
  AttentionProblem p;
  p.batch = B;
  p.seq = T;
  p.heads = H;
  p.head_dim = hd;
  p.window = o.window;
  p.scale = o.scale > 0 ? o.scale : 1.0 / std::sqrt(double(hd));
  p.qkv_stride = stride;
  p.dtype = like.dtype();
  p.device = like.device();
  return p;
}

// The document starts of options.seq_idx (undefined without documents); p.doc_start points
// into them, so the caller keeps them alive while the kernels run.
Tensor document_starts_of(const char* op, AttentionProblem& p, const AttentionOptions& o, const Tensor& like) {
  if (!o.seq_idx.defined()) return Tensor();
  check_seq_idx(op, o.seq_idx, p.batch, p.seq, like);
  Tensor starts = document_starts(o.seq_idx);
  p.doc_start = starts.data<int32_t>();
  return starts;
}

// The dtype the kernels compute in: bf16 on CUDA (f32 is converted), the input's on CPU.
DType compute_dtype(const Tensor& t) { return t.device().is_cuda() ? DType::bf16 : t.dtype(); }

Tensor as_compute(const Tensor& t) {
  DType c = compute_dtype(t);
  return t.dtype() == c ? t : t.to(c);
}

void run_forward(const AttentionProblem& p, const void* q, const void* k, const void* v, void* out,
                 float* lse) {
  if (p.device.is_cpu()) return cpu::attention_forward(p, q, k, v, out, lse);
#ifdef COIL_CUDA
  return cuda::attention_forward(p, q, k, v, out, lse);
#else
  fail("attention: built without CUDA");
#endif
}

void run_backward(const AttentionProblem& p, const void* dout, const void* q, const void* k,
                  const void* v, const void* out, const float* lse, void* dq, void* dk, void* dv) {
  if (p.device.is_cpu()) return cpu::attention_backward(p, dout, q, k, v, out, lse, dq, dk, dv);
#ifdef COIL_CUDA
  return cuda::attention_backward(p, dout, q, k, v, out, lse, dq, dk, dv);
#else
  fail("attention: built without CUDA");
#endif
}

const char* elem(const Tensor& t, int64_t offset_elems) {
  return static_cast<const char*>(t.raw()) + offset_elems * int64_t(dtype_size(t.dtype()));
}
char* elem_mut(const Tensor& t, int64_t offset_elems) {
  return static_cast<char*>(t.raw()) + offset_elems * int64_t(dtype_size(t.dtype()));
}

void check_out_lse(const char* op, const Tensor& out, const Tensor& lse, const Tensor& q,
                   int64_t B, int64_t T, int64_t H, int64_t hd) {
  check_defined(op, out, "out");
  check_defined(op, lse, "lse");
  COIL_CHECK(out.shape() == Shape({B, T, H, hd}),
             "{}: out must be (B, T, H, hd) = ({}, {}, {}, {}), got {}", op, B, T, H, hd,
             describe(out));
  COIL_CHECK(lse.shape() == Shape({B, H, T}) && lse.dtype() == DType::f32,
             "{}: lse must be f32 (B, H, T) = ({}, {}, {}), got {}", op, B, H, T, describe(lse));
  check_same_device(op, q, out);
  check_same_device(op, q, lse);
  check_same_dtype(op, q, out);
}

}  // namespace

bool attention_cuda_supports_head_dim(int64_t head_dim) {
  return head_dim == 64 || head_dim == 96 || head_dim == 128;
}
const char* attention_cuda_head_dims() { return "64, 96 and 128"; }

namespace {

// The value of environment variable `env`: `alt` if it says so, `base` if it says anything
// else, `base` too if it is unset.
int launch_setting(const char* env, int base, int alt) {
  const char* v = std::getenv(env);
  return v && std::atoi(v) == alt ? alt : base;
}

AttentionLaunch& launch_settings() {
  static AttentionLaunch launch = [] {
    AttentionLaunch l;
    l.fwd_warps = launch_setting("COIL_ATTN_FWD_WARPS", 4, 8);
    l.fwd_rows = launch_setting("COIL_ATTN_FWD_ROWS", 32, 16);
    l.dkdv_warps = launch_setting("COIL_ATTN_DKDV_WARPS", 4, 8);
    l.dq_warps = launch_setting("COIL_ATTN_DQ_WARPS", 4, 8);
    return l;
  }();
  return launch;
}

}  // namespace

const AttentionLaunch& attention_launch() { return launch_settings(); }

void set_attention_launch(const AttentionLaunch& l) {
  auto warps_ok = [](int w) { return w == 4 || w == 8; };
  COIL_CHECK(warps_ok(l.fwd_warps) && warps_ok(l.dkdv_warps) && warps_ok(l.dq_warps),
             "set_attention_launch: warps per block must be 4 or 8, got forward {}, dK/dV {}, dQ {}",
             l.fwd_warps, l.dkdv_warps, l.dq_warps);
  COIL_CHECK(l.fwd_rows == 16 || l.fwd_rows == 32,
             "set_attention_launch: forward rows per warp must be 16 or 32, got {}", l.fwd_rows);
  launch_settings() = l;
}

namespace {

// The setting in environment variable `env`: auto (or unset), hopper or portable.
AttentionKernel kernel_from_environment(const char* env) {
  const char* v = std::getenv(env);
  if (!v || std::strcmp(v, "auto") == 0) return AttentionKernel::automatic;
  if (std::strcmp(v, "hopper") == 0) return AttentionKernel::hopper;
  if (std::strcmp(v, "portable") == 0) return AttentionKernel::portable;
  fail("{} must be auto, hopper or portable, got '{}'", env, v);
}
std::atomic<AttentionKernel>& forward_kernel_setting() {
  static std::atomic<AttentionKernel> setting{kernel_from_environment("COIL_ATTN_FWD_KERNEL")};
  return setting;
}
std::atomic<AttentionKernel>& backward_kernel_setting() {
  static std::atomic<AttentionKernel> setting{kernel_from_environment("COIL_ATTN_BWD_KERNEL")};
  return setting;
}
}  // namespace

AttentionKernel attention_forward_kernel() { return forward_kernel_setting().load(); }
void set_attention_forward_kernel(AttentionKernel kernel) { forward_kernel_setting().store(kernel); }
AttentionKernel attention_backward_kernel() { return backward_kernel_setting().load(); }
void set_attention_backward_kernel(AttentionKernel kernel) { backward_kernel_setting().store(kernel); }

std::string attention_hopper_unsupported(int64_t head_dim) {
#ifdef COIL_CUDA
  return cuda::attention_hopper_unsupported(head_dim);
#else
  (void)head_dim;
  return "coil was built without CUDA";
#endif
}

AttentionOutput attention_forward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const AttentionOptions& options) {
  const char* op = "attention_forward";
  check_defined(op, q, "q");
  check_defined(op, k, "k");
  check_defined(op, v, "v");
  check_dim(op, q, 4);
  check_same_shape(op, q, k);
  check_same_shape(op, q, v);
  check_same_dtype(op, q, k);
  check_same_dtype(op, q, v);
  check_same_device(op, q, k);
  check_same_device(op, q, v);
  check_device_dtype(op, q);
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), hd = q.size(3);
  AttentionProblem p = make_problem(op, B, T, H, hd, H * hd, q, options);
  Tensor doc_starts = document_starts_of(op, p, options, q);
  Tensor qc = as_compute(q), kc = as_compute(k), vc = as_compute(v);
  p.dtype = qc.dtype();
  AttentionOutput r;
  r.out = Tensor::empty(q.shape(), qc.dtype(), q.device());
  r.lse = Tensor::empty({B, H, T}, DType::f32, q.device());
  run_forward(p, qc.raw(), kc.raw(), vc.raw(), r.out.raw(), r.lse.data<float>());
  if (r.out.dtype() != q.dtype()) r.out = r.out.to(q.dtype());
  return r;
}

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  const AttentionOptions& options) {
  const char* op = "attention_backward";
  check_defined(op, dout, "dout");
  check_defined(op, q, "q");
  check_defined(op, k, "k");
  check_defined(op, v, "v");
  check_dim(op, q, 4);
  check_same_shape(op, q, k);
  check_same_shape(op, q, v);
  check_same_shape(op, q, dout);
  for (const Tensor* t : {&k, &v, &dout}) {
    check_same_dtype(op, q, *t);
    check_same_device(op, q, *t);
  }
  check_device_dtype(op, q);
  int64_t B = q.size(0), T = q.size(1), H = q.size(2), hd = q.size(3);
  check_out_lse(op, out, lse, q, B, T, H, hd);
  AttentionProblem p = make_problem(op, B, T, H, hd, H * hd, q, options);
  Tensor doc_starts = document_starts_of(op, p, options, q);
  Tensor qc = as_compute(q), kc = as_compute(k), vc = as_compute(v), oc = as_compute(out),
         dc = as_compute(dout);
  p.dtype = qc.dtype();
  AttentionGrads g;
  g.dq = Tensor::empty(q.shape(), qc.dtype(), q.device());
  g.dk = Tensor::empty(q.shape(), qc.dtype(), q.device());
  g.dv = Tensor::empty(q.shape(), qc.dtype(), q.device());
  run_backward(p, dc.raw(), qc.raw(), kc.raw(), vc.raw(), oc.raw(), lse.data<float>(), g.dq.raw(),
               g.dk.raw(), g.dv.raw());
  if (g.dq.dtype() != q.dtype()) {
    g.dq = g.dq.to(q.dtype());
    g.dk = g.dk.to(q.dtype());
    g.dv = g.dv.to(q.dtype());
  }
  return g;
}

AttentionOutput attention_forward_packed(const Tensor& qkv, const AttentionOptions& options) {
  const char* op = "attention_forward_packed";
  check_defined(op, qkv, "qkv");
  check_dim(op, qkv, 5);
  COIL_CHECK(qkv.size(2) == 3, "{}: qkv must be (B, T, 3, H, hd), got {}", op, describe(qkv));
  check_device_dtype(op, qkv);
  int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), hd = qkv.size(4);
  AttentionProblem p = make_problem(op, B, T, H, hd, 3 * H * hd, qkv, options);
  Tensor doc_starts = document_starts_of(op, p, options, qkv);
  Tensor c = as_compute(qkv);
  p.dtype = c.dtype();
  AttentionOutput r;
  r.out = Tensor::empty({B, T, H, hd}, c.dtype(), qkv.device());
  r.lse = Tensor::empty({B, H, T}, DType::f32, qkv.device());
  run_forward(p, elem(c, 0), elem(c, H * hd), elem(c, 2 * H * hd), r.out.raw(),
              r.lse.data<float>());
  if (r.out.dtype() != qkv.dtype()) r.out = r.out.to(qkv.dtype());
  return r;
}

Tensor attention_backward_packed(const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                 const Tensor& lse, const AttentionOptions& options) {
  const char* op = "attention_backward_packed";
  check_defined(op, dout, "dout");
  check_defined(op, qkv, "qkv");
  check_dim(op, qkv, 5);
  COIL_CHECK(qkv.size(2) == 3, "{}: qkv must be (B, T, 3, H, hd), got {}", op, describe(qkv));
  check_device_dtype(op, qkv);
  int64_t B = qkv.size(0), T = qkv.size(1), H = qkv.size(3), hd = qkv.size(4);
  COIL_CHECK(dout.shape() == Shape({B, T, H, hd}),
             "{}: dout must be (B, T, H, hd) = ({}, {}, {}, {}), got {}", op, B, T, H, hd,
             describe(dout));
  check_same_dtype(op, qkv, dout);
  check_same_device(op, qkv, dout);
  check_out_lse(op, out, lse, qkv, B, T, H, hd);
  AttentionProblem p = make_problem(op, B, T, H, hd, 3 * H * hd, qkv, options);
  Tensor doc_starts = document_starts_of(op, p, options, qkv);
  Tensor c = as_compute(qkv), oc = as_compute(out), dc = as_compute(dout);
  p.dtype = c.dtype();
  Tensor g = Tensor::empty(qkv.shape(), c.dtype(), qkv.device());
  run_backward(p, dc.raw(), elem(c, 0), elem(c, H * hd), elem(c, 2 * H * hd), oc.raw(),
               lse.data<float>(), elem_mut(g, 0), elem_mut(g, H * hd), elem_mut(g, 2 * H * hd));
  if (g.dtype() != qkv.dtype()) g = g.to(qkv.dtype());
  return g;
}

}  // namespace coil::kernels
