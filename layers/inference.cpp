#include "layers/inference.h"

#include <algorithm>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/matmul.h"
#include "kernels/decode.h"
#include "kernels/layout.h"
#include "kernels/rope.h"

namespace coil::layers {
namespace {

using autograd::NoGradGuard;

// The mixer of a block: one token of each row, the state continued (kernels/decode.h).
// x (batch, d) in the compute dtype -> (batch, d).
Variable mamba_step(const MambaMixer& m, const Variable& x, LayerState& st) {
  Variable xz = m.in_proj->forward(x);  // (batch, 2 d_inner): x, then z
  Tensor w = kernel_param(*m.conv1d->weight, xz).value().reshape({m.d_inner, m.d_conv});
  Tensor b = m.conv1d->bias ? kernel_param(*m.conv1d->bias, xz).value() : Tensor();
  Variable xc(kernels::conv1d_update(st.conv, xz.value(), w, b));
  Variable x_dbl = m.x_proj->forward(xc);  // (batch, dt_rank + 2 d_state): dt, B, C
  Variable dt(kernels::narrow(x_dbl.value(), 1, 0, m.dt_rank));
  kernels::StateUpdateArgs a;
  a.state = st.ssm;
  a.x = xc.value();
  a.delta = m.dt_proj->forward_no_bias(dt).value();
  a.A_log = kernel_param(*m.A_log, xc).value();
  a.x_dbl = x_dbl.value();
  a.D = kernel_param(*m.D, xc).value();
  a.xz = xz.value();
  a.delta_bias = kernel_param(*m.dt_proj->bias, xc).value();
  return m.out_proj->forward(Variable(kernels::selective_state_update(a)));
}

Variable attention_step(const Attention& att, const Variable& x, LayerState& st, const Tensor& positions) {
  const int64_t batch = x.size(0);
  Tensor qkv = att.in_proj->forward(x).value().reshape({batch, 1, 3, att.n_head, att.head_dim});
  if (att.rope) {
    kernels::RopeOptions ro;
    ro.base = att.rope_theta;
    ro.positions = positions;
    qkv = kernels::rope(qkv, ro);
  }
  kernels::append_kv(qkv, st.k, st.v, positions);
  kernels::AttentionOptions ao;
  ao.window = att.window;
  Tensor y = kernels::attention_decode(qkv, st.k, st.v, positions, ao);
  return att.out_proj->forward(Variable(y.reshape({batch, att.d_model})));
}

// The prompt's part: the training forward, keeping what the steps continue from (the conv's
// last inputs and the scan's state, as carried-state training keeps them). `rows`: this layer's
// state of the prefilled rows (views), `positions` theirs (zeros).
Variable mamba_prefill(const MambaMixer& m, const Variable& x, LayerState& rows) {
  MambaState kept;
  MixerContext context;
  context.final = &kept;
  Variable out = m.forward(x, context);
  rows.conv.copy_(kept.conv);
  rows.ssm.copy_(kept.ssm);
  return out;
}

Variable attention_prefill(const Attention& att, const Variable& x, LayerState& rows, const Tensor& positions) {
  Tensor qkv;
  MixerContext context;
  context.rotated_qkv = &qkv;
  Variable out = att.forward(x, context);
  kernels::append_kv(qkv, rows.k, rows.v, positions);
  return out;
}

void check_tokens(const char* op, const LanguageModel& model, const Tensor& tokens, int64_t dims) {
  COIL_CHECK(tokens.defined() && tokens.dim() == dims && (tokens.dtype() == DType::i32 || tokens.dtype() == DType::i64),
             "{}: tokens must be {} i32 or i64, got {}", op, dims == 1 ? "(batch)" : "(n, length)",
             tokens.defined() ? describe(tokens) : "undefined");
  COIL_CHECK(tokens.device() == model.device(), "{}: tokens are on {} but the model is on {}", op,
             tokens.device().str(), model.device().str());
}

Tensor logits_of(const LanguageModel& model, const Variable& hidden, const Variable& residual) {
  Variable h = model.backbone->norm_f->forward_residual(hidden, residual).normed;
  DType cd = model.compute_dtype();
  return autograd::linear(autograd::to_dtype(h, cd), model.lm_head->weight->compute(cd)).value();
}

}  // namespace

InferenceState::InferenceState(const LanguageModel& model, int64_t batch, int64_t capacity)
    : batch_(batch), capacity_(capacity) {
  const ModelConfig& cfg = model.config();
  COIL_CHECK(batch > 0, "InferenceState: batch must be positive, got {}", batch);
  COIL_CHECK(!cfg.has_attention() || capacity > 0,
             "InferenceState: a model with attention needs a positive capacity (KV cache length), got {}", capacity);
  const DType cd = model.compute_dtype();
  const DType state_dtype = cd == DType::f64 ? DType::f64 : DType::f32;
  const Device dev = model.device();
  for (auto& block : model.backbone->blocks) {
    LayerState s;
    if (block->mixer_kind == MixerKind::mamba) {
      s.conv = Tensor::zeros({batch, cfg.mamba.d_conv - 1, cfg.d_inner()}, cd, dev);
      s.ssm = Tensor::zeros({batch, cfg.d_inner(), cfg.mamba.d_state}, state_dtype, dev);
    } else {
      s.k = Tensor::empty({batch, cfg.attention.n_head, capacity, cfg.head_dim()}, cd, dev);
      s.v = Tensor::empty(s.k.shape(), cd, dev);
    }
    layers.push_back(s);
  }
  positions = Tensor::zeros({batch}, DType::i32, dev);
}

size_t InferenceState::bytes() const {
  size_t n = 0;
  for (auto& s : layers)
    for (const Tensor* t : {&s.conv, &s.ssm, &s.k, &s.v})
      if (t->defined()) n += t->nbytes();
  return n;
}

Tensor prefill(const LanguageModel& model, InferenceState& state, const Tensor& tokens, int64_t row) {
  const char* op = "prefill";
  NoGradGuard no_grad;
  check_tokens(op, model, tokens, 2);
  const ModelConfig& cfg = model.config();
  const int64_t n = tokens.size(0), L = tokens.size(1);
  COIL_CHECK(n > 0 && L > 0, "{}: tokens {} hold no prompt", op, describe(tokens));
  COIL_CHECK(row >= 0 && row + n <= state.batch(), "{}: rows [{}, {}) are outside the state's {} rows", op, row,
             row + n, state.batch());
  if (cfg.has_attention())
    COIL_CHECK(L <= state.capacity(), "{}: a prompt of {} tokens does not fit the KV cache of {}", op, L,
               state.capacity());
  Tensor positions = state.positions.narrow0(row, row + n);
  positions.zero_();
  // The embedding, positions and blocks of LanguageModel::hidden_states, each mixer
  // keeping its state.
  Variable h = model.backbone->embedding->forward(tokens);
  if (model.backbone->pos_embedding)
    COIL_CHECK(L <= cfg.attention.max_seq_len, "{}: a prompt of {} tokens exceeds model.attention.max_seq_len ({})",
               op, L, cfg.attention.max_seq_len);
  h = model.backbone->add_positions(h, Tensor::arange(L, DType::i64, tokens.device()));
  if (!cfg.residual_in_fp32) h = autograd::to_dtype(h, model.compute_dtype());
  Variable residual;
  for (size_t i = 0; i < model.backbone->blocks.size(); ++i) {
    const Block& block = *model.backbone->blocks[i];
    const LayerState& full = state.layers[i];
    LayerState rows;
    for (auto [dst, src] : {std::pair{&rows.conv, &full.conv}, {&rows.ssm, &full.ssm}, {&rows.k, &full.k},
                            {&rows.v, &full.v}})
      if (src->defined()) *dst = src->narrow0(row, row + n);
    std::tie(h, residual) = block.forward(h, residual, [&](const Variable& x) {
      if (block.mixer_kind == MixerKind::mamba)
        return mamba_prefill(static_cast<const MambaMixer&>(*block.mixer), x, rows);
      return attention_prefill(static_cast<const Attention&>(*block.mixer), x, rows, positions);
    });
  }
  // Only the last token's logits: the head's product over (n, d), not (n, L, d).
  const int64_t d = cfg.d_model;
  Tensor last_h = kernels::narrow(h.value(), 1, L - 1, 1).reshape({n, d});
  Tensor last_r = kernels::narrow(residual.value(), 1, L - 1, 1).reshape({n, d});
  positions.fill_(double(L));
  return logits_of(model, Variable(last_h), Variable(last_r));
}

Tensor forward_step(const LanguageModel& model, InferenceState& state, const Tensor& tokens) {
  const char* op = "forward_step";
  NoGradGuard no_grad;
  check_tokens(op, model, tokens, 1);
  COIL_CHECK(tokens.size(0) == state.batch(), "{}: {} tokens for a state of {} rows", op, tokens.size(0),
             state.batch());
  Variable h = model.backbone->embedding->forward(tokens);
  h = model.backbone->add_positions(h, state.positions);
  if (!model.config().residual_in_fp32) h = autograd::to_dtype(h, model.compute_dtype());
  Variable residual;
  for (size_t i = 0; i < model.backbone->blocks.size(); ++i) {
    const Block& block = *model.backbone->blocks[i];
    LayerState& st = state.layers[i];
    std::tie(h, residual) = block.forward(h, residual, [&](const Variable& x) {
      if (block.mixer_kind == MixerKind::mamba) return mamba_step(static_cast<const MambaMixer&>(*block.mixer), x, st);
      return attention_step(static_cast<const Attention&>(*block.mixer), x, st, state.positions);
    });
  }
  Tensor logits = logits_of(model, h, residual);
  kernels::advance_positions(state.positions, 1);
  return logits;
}

void use_inference_weights(LanguageModel& model) {
  const DType cd = model.compute_dtype();
  auto to_compute_master = [&](Parameter& p) {
    if (p.var.dtype() != cd) p.var.impl()->value = p.var.value().to(cd);
    p.var.clear_grad();
    p.invalidate_compute_copy();
  };
  for (auto& [name, module] : model.named_modules()) {
    if (auto* linear = dynamic_cast<Linear*>(module)) {
      to_compute_master(*linear->weight);
      if (linear->bias && linear->bias->var.dtype() != cd) linear->bias->set_compute_copy(linear->bias->value().to(cd));
    } else if (auto* embedding = dynamic_cast<Embedding*>(module)) {
      to_compute_master(*embedding->weight);
    } else if (auto* head = dynamic_cast<Head*>(module)) {
      to_compute_master(*head->weight);
    }
  }
}

}  // namespace coil::layers
