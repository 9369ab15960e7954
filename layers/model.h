// Block and LanguageModel: one code path for pure Mamba, pure Transformer (Transformer++,
// GPT-2) and hybrids; the config's layer pattern picks each block's mixer.
//
//   LanguageModel
//     backbone.embedding            [V_padded, d]
//     backbone.pos_embedding        [max_seq_len, d]      (positions: learned only; sinusoidal
//                                                         positions are computed, no parameters)
//     backbone.layers.{i}           Block: norm, mixer, norm2 + mlp (when mlp != none)
//     backbone.norm_f
//     lm_head.weight                [V_padded, d]         (alias of the embedding when tied)
//
// A Block is pre-norm residual with the fused add+norm of autograd/functions/norm.h, as the
// reference's Block with fused_add_norm:
//   residual = hidden + residual;  hidden = mixer(norm(residual))
//   residual = hidden + residual;  hidden = mlp(norm2(residual))          (if an MLP)
// and the model ends with residual = hidden + residual; out = norm_f(residual). The residual
// stream is fp32 (residual_in_fp32) while mixers compute in the compute dtype.
#pragma once
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "layers/basic.h"
#include "layers/mixer.h"
#include "layers/model_config.h"

namespace coil::layers {

// Submodules named "0", "1", ...
class ModuleList : public Module {
 public:
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> m) {
    items_.push_back(m);
    return register_module(std::to_string(items_.size() - 1), std::move(m));
  }
  size_t size() const { return items_.size(); }
  const std::shared_ptr<Module>& operator[](size_t i) const { return items_[i]; }

 private:
  std::vector<std::shared_ptr<Module>> items_;
};

// The carried state of a model: one MambaState per layer (undefined tensors for attention
// layers, and for zeros).
using ModelState = std::vector<MambaState>;

// Views of rows [begin, end) of every tensor of a state (one micro-batch of the slots).
ModelState state_rows(const ModelState& state, int64_t begin, int64_t end);
// Zeros row `row` of every tensor of a state (a sequence that starts afresh).
void zero_state_row(const ModelState& state, int64_t row);

// Optional inputs of a forward pass (docs/MODELS.md, "Packed documents and carried state").
struct SequenceContext {
  Tensor seq_idx;                       // (B, T) i32 on the model's device: documents
  const ModelState* initial = nullptr;  // the Mamba layers' states before position 0
  ModelState* final = nullptr;          // receives their states after the last position
};

// Parameter initialization of a family (see ModelConfig::init).
struct InitPlan {
  LinearInit linear;    // every Linear but the residual output projections
  LinearInit residual;  // out_proj and fc2 (the projections that write into the residual)
  double embedding_std;
};
InitPlan init_plan(const ModelConfig& cfg);

class Block : public Module {
 public:
  Block(const ModelConfig& cfg, MixerKind mixer_kind, Generator& gen, DType param_dtype);
  // (hidden, residual) -> (hidden', residual'); residual undefined for the first block.
  std::pair<Variable, Variable> forward(const Variable& hidden, const Variable& residual,
                                        const MixerContext& context = {}) const;
  // The same with the mixer's part done by `mix` (recurrent inference runs the block's norms
  // and MLP around its own step of the mixer: layers/inference.h).
  std::pair<Variable, Variable> forward(const Variable& hidden, const Variable& residual,
                                        const std::function<Variable(const Variable&)>& mix) const;
  int64_t matmul_parameters() const;

  MixerKind mixer_kind;
  bool residual_in_fp32;
  std::shared_ptr<Norm> norm, norm2;  // norm2 null without an MLP
  std::shared_ptr<Mixer> mixer;
  std::shared_ptr<MLP> mlp;  // null when mlp == none
};

class Backbone : public Module {
 public:
  Backbone(const ModelConfig& cfg, Generator& gen, DType param_dtype);
  // The token embeddings h (.., d) plus the positions' (learned or sinusoidal) at `positions`
  // (i32 or i64, h's leading shape or its last dims); h itself for rope and none.
  Variable add_positions(const Variable& h, const Tensor& positions) const;
  std::shared_ptr<Embedding> embedding, pos_embedding;  // pos_embedding null unless learned
  bool sinusoidal_positions;
  std::shared_ptr<ModuleList> layers;
  std::shared_ptr<Norm> norm_f;
  std::vector<std::shared_ptr<Block>> blocks;
};

// "lm_head": one parameter, "weight" [V_padded, d]; an alias of the embedding when tied.
class Head : public Module {
 public:
  Head(const ModelConfig& cfg, const std::shared_ptr<Parameter>& tied, Generator& gen,
       const InitPlan& plan, DType param_dtype);
  std::shared_ptr<Parameter> weight;
};

class LanguageModel : public Module {
 public:
  // Builds on the CPU with parameters drawn from Generator(seed) (the same on every device);
  // validates the config first. Parameters are f32 (f64 when config.dtype is f64).
  explicit LanguageModel(const ModelConfig& cfg, uint64_t seed = 0);

  // tokens [B, T] (i32 or i64) -> the final normed hidden states [B, T, d]. With documents
  // (context.seq_idx) no information crosses a document start, and learned positions restart
  // at each; context.initial / final carry the Mamba layers' states in and out.
  Variable hidden_states(const Tensor& tokens, const SequenceContext& context = {}) const;
  // tokens [B, T] -> logits [B, T, V_padded] (materialized: for evaluation and generation).
  Variable forward(const Tensor& tokens, const SequenceContext& context = {}) const;
  // Mean next-token cross-entropy of targets [B, T] (ignore_index skipped), through
  // linear_cross_entropy so the [B*T, V] logits never materialize. An f32 scalar.
  Variable loss(const Tensor& tokens, const Tensor& targets, int64_t ignore_index = -100,
                const SequenceContext& context = {}) const;
  // A zero carried state for `batch` rows (entries of attention layers stay undefined).
  ModelState zero_state(int64_t batch) const;

  // Unique parameters; without embeddings: minus the token and position embeddings and an
  // untied head (Kaplan's non-embedding N).
  int64_t num_parameters(bool include_embeddings = true) const;
  // Weights that take part in matrix products, the head included (the conv1d weights count
  // too: each is used once per token, like a matmul weight).
  int64_t matmul_parameters() const;
  // Training FLOPs per token (forward + backward): layers::training_flops_per_token
  // (layers/model_facts.h) of the config.
  double flops_per_token(int64_t seq_len) const;

  // Moves the parameters and sets the compute dtype the config asks for on that device
  // (auto: bf16 on CUDA, f32 on the CPU, f64 when the parameters are f64).
  void to(Device device) override;

  const ModelConfig& config() const { return cfg_; }
  std::shared_ptr<Backbone> backbone;
  std::shared_ptr<Head> lm_head;

 private:
  ModelConfig cfg_;
};

// The compute dtype config.dtype resolves to on a device.
DType resolve_compute_dtype(const ModelConfig& cfg, Device device);

}  // namespace coil::layers
