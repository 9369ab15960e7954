#include "kernels/decode.h"

#include <cmath>

#include "kernels/dispatch.h"
#include "kernels/selective_scan.h"

namespace coil::kernels {
namespace {

void check_shape(const char* op, const Tensor& t, const char* what, const Shape& expected) {
  check_defined(op, t, what);
  COIL_CHECK(t.shape() == expected, "{}: {} must have shape {}, got {}", op, what, shape_str(expected),
             describe(t));
}

using Named = std::initializer_list<std::pair<const char*, const Tensor*>>;

// Every tensor on `like`'s device. CPU: every tensor in like's dtype (f32 or f64). CUDA: the
// activations `acts` in like's dtype (f32 or bf16), the parameters and states `f32s` in f32.
void check_dtypes(const char* op, const Tensor& like, Named acts, Named f32s) {
  const bool cpu = like.device().is_cpu();
  if (cpu) check_dtype(op, like, {DType::f32, DType::f64});
  else check_dtype(op, like, {DType::f32, DType::bf16});
  auto check = [&](const char* name, const Tensor& t, DType want) {
    if (!t.defined()) return;
    COIL_CHECK(t.device() == like.device(), "{}: {} is on {} but the activations are on {}", op, name,
               t.device().str(), like.device().str());
    COIL_CHECK(t.dtype() == want, "{}: {} must be {} here, got {}", op, name, dtype_name(want), describe(t));
  };
  for (auto& [name, t] : acts) check(name, *t, like.dtype());
  for (auto& [name, t] : f32s) check(name, *t, cpu ? like.dtype() : DType::f32);
}

void check_positions(const char* op, const Tensor& positions, int64_t batch, Device device) {
  check_shape(op, positions, "positions", {batch});
  COIL_CHECK(positions.dtype() == DType::i32, "{}: positions must be i32, got {}", op, describe(positions));
  COIL_CHECK(positions.device() == device, "{}: positions are on {} but the cache is on {}", op,
             positions.device().str(), device.str());
}

// CPU positions, checked on the host (a GPU kernel cannot raise: it skips or clamps instead).
void check_positions_below(const char* op, const Tensor& positions, int64_t limit) {
  const int32_t* p = positions.data<int32_t>();
  for (int64_t b = 0; b < positions.numel(); ++b)
    COIL_CHECK(p[b] >= 0 && p[b] < limit, "{}: positions[{}] = {} is outside [0, {}): the cache is too short", op, b,
               p[b], limit);
}

// k_cache, v_cache (batch, heads, capacity, hd), the same shape, dtype and device.
void check_caches(const char* op, const Tensor& k_cache, const Tensor& v_cache) {
  check_defined(op, k_cache, "k_cache");
  COIL_CHECK(k_cache.dim() == 4, "{}: k_cache must be (batch, heads, capacity, head_dim), got {}", op,
             describe(k_cache));
  check_shape(op, v_cache, "v_cache", k_cache.shape());
  check_same_dtype(op, k_cache, v_cache);
  check_same_device(op, k_cache, v_cache);
  if (k_cache.device().is_cuda())
    COIL_CHECK(attention_cuda_supports_head_dim(k_cache.size(3)), "{}: head dim {} is not one of the CUDA head dims {}",
               op, k_cache.size(3), attention_cuda_head_dims());
}

#ifndef COIL_CUDA
[[noreturn]] void no_cuda(const char* op, const Tensor& t) {
  fail("{}: {} needs CUDA, but coil was built without it", op, describe(t));
}
#endif

}  // namespace

Tensor conv1d_update(const Tensor& conv_state, const Tensor& xz, const Tensor& weight, const Tensor& bias) {
  const char* op = "conv1d_update";
  check_defined(op, conv_state, "conv_state");
  check_defined(op, weight, "weight");
  COIL_CHECK(weight.dim() == 2, "{}: weight must be (dim, width), got {}", op, describe(weight));
  const int64_t dim = weight.size(0), width = weight.size(1);
  COIL_CHECK(conv_state.dim() == 3 && conv_state.size(1) == width - 1 && conv_state.size(2) == dim,
             "{}: conv_state must be (batch, width - 1 = {}, dim = {}), got {}", op, width - 1, dim,
             describe(conv_state));
  const int64_t batch = conv_state.size(0);
  check_shape(op, xz, "xz", {batch, 2 * dim});
  if (bias.defined()) check_shape(op, bias, "bias", {dim});
  check_dtypes(op, xz, {{"conv_state", &conv_state}}, {{"weight", &weight}, {"bias", &bias}});
  Tensor out = Tensor::empty({batch, dim}, xz.dtype(), xz.device());
  if (out.numel() == 0) return out;
  COIL_DISPATCH(op, xz.device(), cpu::conv1d_update(conv_state, xz, weight, bias, out),
                cuda::conv1d_update(conv_state, xz, weight, bias, out));
  return out;
}

Tensor selective_state_update(const StateUpdateArgs& a) {
  const char* op = "selective_state_update";
  check_defined(op, a.state, "state");
  check_defined(op, a.x, "x");
  COIL_CHECK(a.state.dim() == 3, "{}: state must be (batch, dim, d_state), got {}", op, describe(a.state));
  const int64_t batch = a.state.size(0), dim = a.state.size(1), n = a.state.size(2);
  check_shape(op, a.x, "x", {batch, dim});
  check_shape(op, a.delta, "delta", {batch, dim});
  check_shape(op, a.A_log, "A_log", {dim, n});
  check_defined(op, a.x_dbl, "x_dbl");
  COIL_CHECK(a.x_dbl.dim() == 2 && a.x_dbl.size(0) == batch && a.x_dbl.size(1) >= 2 * n,
             "{}: x_dbl must be (batch = {}, dt_rank + 2 d_state = ... + {}), got {}", op, batch, 2 * n,
             describe(a.x_dbl));
  check_shape(op, a.xz, "xz", {batch, 2 * dim});
  if (a.D.defined()) check_shape(op, a.D, "D", {dim});
  if (a.delta_bias.defined()) check_shape(op, a.delta_bias, "delta_bias", {dim});
  check_dtypes(op, a.x, {{"delta", &a.delta}, {"x_dbl", &a.x_dbl}, {"xz", &a.xz}},
               {{"state", &a.state}, {"A_log", &a.A_log}, {"D", &a.D}, {"delta_bias", &a.delta_bias}});
  Tensor out = Tensor::empty({batch, dim}, a.x.dtype(), a.x.device());
  if (out.numel() == 0) return out;
  if (a.x.device().is_cpu()) {
    cpu::selective_state_update(a, out);
    return out;
  }
#ifdef COIL_CUDA
  COIL_CHECK(n <= kScanMaxStateCuda, "{}: d_state {} exceeds the CUDA limit of {}", op, n, kScanMaxStateCuda);
  cuda::selective_state_update(a, out);
  return out;
#else
  no_cuda(op, a.x);
#endif
}

void append_kv(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions) {
  const char* op = "append_kv";
  check_caches(op, k_cache, v_cache);
  check_defined(op, qkv, "qkv");
  const int64_t batch = k_cache.size(0), heads = k_cache.size(1), hd = k_cache.size(3);
  COIL_CHECK(qkv.dim() == 5 && qkv.size(0) == batch && qkv.size(2) == 3 && qkv.size(3) == heads && qkv.size(4) == hd,
             "{}: qkv must be (batch = {}, T, 3, heads = {}, head_dim = {}) for caches {}, got {}", op, batch, heads,
             hd, describe(k_cache), describe(qkv));
  check_positions(op, positions, batch, k_cache.device());
  check_dtypes(op, qkv, {{"k_cache", &k_cache}, {"v_cache", &v_cache}}, {});
  if (qkv.numel() == 0) return;
  if (qkv.device().is_cpu()) {
    check_positions_below(op, positions, k_cache.size(2) - qkv.size(1) + 1);
    return cpu::append_kv(qkv, k_cache, v_cache, positions);
  }
#ifdef COIL_CUDA
  cuda::append_kv(qkv, k_cache, v_cache, positions);
#else
  no_cuda(op, qkv);
#endif
}

Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions,
                        const AttentionOptions& options) {
  const char* op = "attention_decode";
  check_caches(op, k_cache, v_cache);
  DecodeAttentionProblem p;
  p.batch = k_cache.size(0);
  p.heads = k_cache.size(1);
  p.capacity = k_cache.size(2);
  p.head_dim = k_cache.size(3);
  check_defined(op, q, "q");
  COIL_CHECK(q.shape() == Shape({p.batch, p.heads, p.head_dim}) ||
                 q.shape() == Shape({p.batch, 1, 3, p.heads, p.head_dim}),
             "{}: q must be ({}, {}, {}) or a packed qkv ({}, 1, 3, {}, {}) for caches {}, got {}", op, p.batch,
             p.heads, p.head_dim, p.batch, p.heads, p.head_dim, describe(k_cache), describe(q));
  check_positions(op, positions, p.batch, k_cache.device());
  check_dtypes(op, q, {{"k_cache", &k_cache}, {"v_cache", &v_cache}}, {});
  COIL_CHECK(options.window >= 0, "{}: window must be >= 0, got {}", op, options.window);
  p.window = options.window;
  p.scale = options.scale > 0 ? options.scale : 1.0 / std::sqrt(double(p.head_dim));
  Tensor out = Tensor::empty({p.batch, p.heads, p.head_dim}, q.dtype(), q.device());
  if (out.numel() == 0) return out;
  if (q.device().is_cpu()) {
    check_positions_below(op, positions, p.capacity);
    cpu::attention_decode(p, q, k_cache, v_cache, positions, out);
    return out;
  }
#ifdef COIL_CUDA
  cuda::attention_decode(p, q, k_cache, v_cache, positions, out);
  return out;
#else
  no_cuda(op, q);
#endif
}

void advance_positions(const Tensor& positions, int64_t count) {
  const char* op = "advance_positions";
  check_defined(op, positions, "positions");
  COIL_CHECK(positions.dtype() == DType::i32 && positions.dim() == 1, "{}: positions must be i32 (batch), got {}", op,
             describe(positions));
  if (positions.device().is_cpu()) {
    int32_t* p = positions.data<int32_t>();
    for (int64_t b = 0; b < positions.numel(); ++b) p[b] += int32_t(count);
    return;
  }
#ifdef COIL_CUDA
  if (positions.numel() > 0) cuda::advance_positions(positions, count);
#else
  no_cuda(op, positions);
#endif
}

}  // namespace coil::kernels
