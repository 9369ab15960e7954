// Recurrent inference, one token per batch row at a time: the Mamba mixer's state updates
// (the reference's Mamba.step) and attention against a KV cache. layers/inference.h composes
// them; training never calls them.
//
// Mamba (dim = d_inner, width = d_conv), per batch row b and channel d:
//   conv_state (batch, width - 1, dim): the last width - 1 inputs of the conv (x before it),
//     oldest first; channel-last like the training conv, so a thread per channel reads and
//     writes coalesced rows.
//   conv1d_update: with window = [conv_state[b], x[b]] (width inputs, oldest first)
//     out[b, d] = silu(bias[d] + sum_k weight[d, k] * window[k, d]);  conv_state[b] = window[1:]
//   selective_state_update, state (batch, dim, d_state), per state n:
//     dt = softplus(delta[b, d] + delta_bias[d]);  A = -exp(A_log[d, n])
//     h[n] = exp(dt * A) * h[n] + dt * B[b, n] * x[b, d]
//     y = sum_n C[b, n] * h[n] + D[d] * x[b, d];  out[b, d] = y * silu(z[b, d])
//   The kernels read the mixer's projections where they are (no split copies):
//     xz    (batch, 2 dim)                    in_proj's output: x = xz[:, :dim], z = xz[:, dim:]
//     x_dbl (batch, dt_rank + 2 d_state)      x_proj's output: dt, then B, then C
//
// Attention (heads H, head dim hd; qkv token-major as kernels/attention.h takes it):
//   k_cache, v_cache (batch, H, capacity, hd): head-major, so one head's keys are contiguous.
//   positions (batch) i32 on the device: row b holds positions[b] tokens; its next token goes
//     to position positions[b] (RoPE angles, learned positions and the cache slot all read it,
//     so a captured CUDA graph replays with the current values).
//   append_kv: k and v of token t of qkv (batch, T, 3, H, hd) go to slot positions[b] + t.
//   The caller sizes the cache: the CPU raises for a slot at or past capacity; the GPU, which
//   cannot raise without a sync, skips such writes and clamps the query position.
//   attention_decode: the query q (batch, H, hd), or section 0 of a packed qkv (batch, 1, 3, H,
//     hd), of the token at p = positions[b] attends to
//     the keys s <= p (and p - s < window when window > 0):
//     out = softmax(q k^T * scale) v     (scale <= 0: 1/sqrt(hd))
//   advance_positions: positions += count.
//
// Dtypes: CPU all f32 or f64 (one dtype; positions i32). CUDA: activations, the caches and
// conv_state f32 or bf16 (one dtype), the ssm state, A_log, D, delta_bias, conv weight and
// bias f32; fp32 math. CUDA head dims 64, 96, 128; d_state up to kScanMaxStateCuda.
#pragma once
#include "core/tensor.h"
#include "kernels/attention.h"

namespace coil::kernels {

// Updates conv_state in place; returns x after the conv and SiLU, (batch, dim).
Tensor conv1d_update(const Tensor& conv_state, const Tensor& xz, const Tensor& weight, const Tensor& bias);

struct StateUpdateArgs {
  Tensor state;       // (batch, dim, d_state), updated in place
  Tensor x;           // (batch, dim): conv1d_update's output
  Tensor delta;       // (batch, dim): dt_proj's product, before bias and softplus
  Tensor A_log;       // (dim, d_state)
  Tensor x_dbl;       // (batch, dt_rank + 2 d_state): B and C are its last 2 d_state columns
  Tensor D;           // (dim), optional
  Tensor xz;          // (batch, 2 dim): z is its second half
  Tensor delta_bias;  // (dim), optional
};
// Returns out (batch, dim) in x's dtype.
Tensor selective_state_update(const StateUpdateArgs& args);

void append_kv(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions);
Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions,
                        const AttentionOptions& options = {});
void advance_positions(const Tensor& positions, int64_t count);

// attention_decode's sizes, resolved by the dispatcher.
struct DecodeAttentionProblem {
  int64_t batch = 0, heads = 0, head_dim = 0, capacity = 0;
  int64_t window = 0;
  double scale = 0;  // resolved (> 0)
};

namespace cpu {
void conv1d_update(const Tensor& conv_state, const Tensor& xz, const Tensor& weight, const Tensor& bias,
                   const Tensor& out);
void selective_state_update(const StateUpdateArgs& args, const Tensor& out);
void append_kv(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions);
void attention_decode(const DecodeAttentionProblem& p, const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, const Tensor& positions, const Tensor& out);
}  // namespace cpu
namespace cuda {
void conv1d_update(const Tensor& conv_state, const Tensor& xz, const Tensor& weight, const Tensor& bias,
                   const Tensor& out);
void selective_state_update(const StateUpdateArgs& args, const Tensor& out);
void append_kv(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const Tensor& positions);
void attention_decode(const DecodeAttentionProblem& p, const Tensor& q, const Tensor& k_cache,
                      const Tensor& v_cache, const Tensor& positions, const Tensor& out);
void advance_positions(const Tensor& positions, int64_t count);
}  // namespace cuda

}  // namespace coil::kernels
