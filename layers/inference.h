// Recurrent inference for every model family (docs/GENERATION.md): a sequence continues one
// token at a time from a state of fixed size per Mamba layer and a KV cache per attention
// layer, under no-grad, in the model's compute dtype (bf16 on a GPU, f32 on the CPU).
//
//   InferenceState state(model, batch, capacity);      // capacity: the longest row, in tokens
//   Tensor logits = prefill(model, state, prompt, 0);  // rows [0, n): logits of their last token
//   ... sample next (batch) i32 ...
//   logits = forward_step(model, state, next);         // every row one token further
//
// Per layer:
//   mamba      conv (batch, d_conv - 1, d_inner): the conv's last inputs, compute dtype
//              ssm  (batch, d_inner, d_state): the scan's state, fp32 (f64 for f64 models)
//   attention  k, v (batch, n_head, capacity, head_dim): the KV cache, compute dtype
// and positions (batch) i32 on the model's device: the tokens each row holds, which is also
// the position of its next token (RoPE angle, learned position, cache slot).
//
// prefill runs the training path's parallel forward on tokens (n, L) for the fresh rows
// [row, row + n) (the selective scan returns its final state; flash attention; RoPE at 0..L-1),
// keeps each layer's state (conv: the last d_conv - 1 inputs, zero-padded when L is shorter;
// k and v into slots 0..L-1), sets their positions to L and returns the logits of the last
// token, (n, V_padded). Rows of different prompt lengths are prefilled by separate calls.
// forward_step takes one token per row (tokens (batch) i32 on the device), updates every
// layer's state through the decode kernels (kernels/decode.h), advances positions by one and
// returns the logits (batch, V_padded). It allocates only temporaries, reads the positions on
// the device and never synchronizes, so it can be captured in a CUDA graph (core/cuda_graph.h).
// The caller keeps every row within capacity (and, for learned positions, within
// model.attention.max_seq_len): on a GPU the kernels cannot raise.
#pragma once
#include <vector>

#include "layers/model.h"

namespace coil::layers {

struct LayerState {
  Tensor conv, ssm;  // mamba
  Tensor k, v;       // attention
};

class InferenceState {
 public:
  // States for `batch` rows on the model's device; capacity bounds the KV caches (unused by
  // models without attention).
  InferenceState(const LanguageModel& model, int64_t batch, int64_t capacity);
  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  // Bytes of all layers' states and caches (what a row costs: bytes() / batch()).
  size_t bytes() const;

  std::vector<LayerState> layers;
  Tensor positions;  // (batch) i32

 private:
  int64_t batch_, capacity_;
};

Tensor prefill(const LanguageModel& model, InferenceState& state, const Tensor& tokens, int64_t row);
Tensor forward_step(const LanguageModel& model, InferenceState& state, const Tensor& tokens);

// Prepares a model for generation on its device: the weights of matrix products and the
// embeddings become masters in the compute dtype (bf16 on a GPU: half the memory of f32, and
// no cast per step), Linear biases get a compute-dtype copy; norm weights, A_log, D, the conv
// and dt_proj.bias keep their f32 masters, which the kernels read. The model can no longer be
// trained (its large weights have lost their f32 masters).
void use_inference_weights(LanguageModel& model);

}  // namespace coil::layers
