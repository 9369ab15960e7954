// The mixers of a block: MambaMixer (the reference Mamba block) and Attention (fused qkv,
// RoPE or none, causal flash attention). Both map x [B, T, d_model] -> [B, T, d_model] in the
// module's compute dtype.
#pragma once
#include <memory>

#include "layers/basic.h"

namespace coil::layers {

// The state of a Mamba mixer at the edge of a window (docs/MODELS.md, "Packed documents and
// carried state"): conv (B, d_conv - 1, d_inner) in the compute dtype, the last inputs of the
// causal conv; ssm (B, d_inner, d_state), the scan's state (fp32 on the GPU, the compute dtype
// on the CPU). Undefined tensors stand for zeros.
struct MambaState {
  Tensor conv, ssm;
};

// What a mixer sees besides x, each optional.
struct MixerContext {
  Tensor seq_idx;                       // (B, T) i32 on x's device: documents (kernels/documents.h)
  const MambaState* initial = nullptr;  // Mamba: the state before position 0
  MambaState* final = nullptr;          // Mamba: receives the state after the last position (detached)
  Tensor* rotated_qkv = nullptr;        // Attention: receives qkv after RoPE (B, T, 3, H, hd), what a
                                        // KV cache keeps (layers/inference.h)
};

class Mixer : public Module {
 public:
  virtual Variable forward(const Variable& x, const MixerContext& context = {}) const = 0;
  // Weights that take part in matrix products (and the depthwise conv), for FLOP counting.
  virtual int64_t matmul_parameters() const = 0;
};

// Depthwise causal conv1d as the reference's nn.Conv1d(groups=d, padding=w-1):
// "weight" [d, 1, w], "bias" [d] (optional); PyTorch's default init U(+-1/sqrt(w)).
class CausalConv1d : public Module {
 public:
  CausalConv1d(int64_t channels, int64_t width, bool bias, Generator& gen, DType param_dtype);
  int64_t channels, width;
  std::shared_ptr<Parameter> weight, bias;
};

// The reference Mamba (selective SSM) block, names as mamba_ssm's Mamba:
//   A_log [d_inner, d_state], D [d_inner], in_proj [2*d_inner, d], conv1d, x_proj
//   [dt_rank + 2*d_state, d_inner], dt_proj [d_inner, dt_rank] (+ bias), out_proj [d, d_inner].
// forward: xz = in_proj(x); x, z = split; x = silu(conv1d(x)); (dt, B, C) = x_proj(x);
//   delta_raw = dt_proj.weight @ dt (the bias goes to the scan as delta_bias);
//   y = selective_scan(x, delta_raw, A = -exp(A_log), B, C, D, z, delta_bias, softplus);
//   out = out_proj(y). The conv and the scan take the context's documents and states.
// model.mamba.selective = false (the selection ablation, docs/MODELS.md): no x_proj and
// dt_proj; instead dt_bias [d_inner], B [d_state] and C [d_state], learned and the same at
// every position: delta = softplus(dt_bias) per channel, B and C broadcast over batch and
// time; the same scan kernel, the rest of the block unchanged.
class MambaMixer : public Mixer {
 public:
  // in_init: in_proj and x_proj; out_init: out_proj (init_plan's residual projections, scaled
  // by the reference's rescale_prenorm_residual factor); dt_proj has its own (dt_scale).
  MambaMixer(const ModelConfig& cfg, Generator& gen, LinearInit in_init, LinearInit out_init,
             DType param_dtype = DType::f32);
  Variable forward(const Variable& x, const MixerContext& context = {}) const override;
  int64_t matmul_parameters() const override;
  // A zero state for `batch` rows, in the dtypes and on the device forward uses.
  MambaState zero_state(int64_t batch) const;

  // The scan's delta (before its bias and softplus), delta bias, B and C for the conv
  // output xs (B, L, d_inner): delta (B, L, d_inner), B and C (B, L, d_state). Selective:
  // projections of xs; otherwise the learned parameters, broadcast.
  struct SsmParameters {
    Variable delta, delta_bias, B, C;
  };
  SsmParameters ssm_parameters(const Variable& xs) const;

  int64_t d_model, d_inner, d_state, d_conv, dt_rank;
  bool selective;
  std::shared_ptr<Parameter> A_log, D;
  std::shared_ptr<Parameter> dt_bias, B, C;      // selective = false only
  std::shared_ptr<Linear> in_proj, x_proj, dt_proj, out_proj;  // x_proj, dt_proj: selective only
  std::shared_ptr<CausalConv1d> conv1d;
};

// A Mamba parameter as its kernels take it: fp32 masters go to the GPU kernels as they are (A,
// D, delta_bias, conv weights: the kernels take fp32); on the CPU every tensor of an op shares
// the compute dtype (`like`'s).
Variable kernel_param(const Parameter& p, const Variable& like);

// Multi-head causal self-attention, names as mamba_ssm's MHA: in_proj [3*d, d] (rows q, k,
// v; + bias when config.bias), out_proj [d, d] (+ bias). Positions: rope rotates q and k
// (theta from the config), learned and none leave them (learned positions are added to
// the embedding by the model). window > 0: sliding-window causal attention. The context's
// documents mask attention across them; carried states do not apply (a window is attended
// alone).
class Attention : public Mixer {
 public:
  Attention(const ModelConfig& cfg, Generator& gen, LinearInit in_init, LinearInit out_init,
            DType param_dtype = DType::f32);
  Variable forward(const Variable& x, const MixerContext& context = {}) const override;
  int64_t matmul_parameters() const override;

  int64_t d_model, n_head, head_dim, window;
  bool rope;
  double rope_theta;
  std::shared_ptr<Linear> in_proj, out_proj;
};

}  // namespace coil::layers
