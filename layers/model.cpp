#include "layers/model.h"

#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/layout.h"
#include "autograd/functions/loss.h"
#include "autograd/functions/matmul.h"
#include "kernels/documents.h"
#include "kernels/positions.h"
#include "layers/model_facts.h"

namespace coil::layers {

InitPlan init_plan(const ModelConfig& cfg) {
  InitPlan p;
  p.embedding_std = cfg.init_std;
  if (cfg.init == InitScheme::gpt2) {
    p.linear = LinearInit{cfg.init_std, 1.0};
    p.residual = LinearInit{cfg.init_std, 1.0};
    if (cfg.rescale_prenorm_residual) p.residual.scale = 1.0 / std::sqrt(2.0 * double(cfg.n_layer));
  } else {
    // The reference's _init_weights: Linear weights keep PyTorch's default; out_proj.weight
    // and fc2.weight are redrawn (kaiming uniform) and divided by sqrt(n_residuals * n_layer).
    p.linear = LinearInit{0.0, 1.0};
    p.residual = LinearInit{0.0, 1.0};
    int n_res = cfg.mlp == MlpKind::none ? 1 : 2;
    if (cfg.rescale_prenorm_residual) p.residual.scale = 1.0 / std::sqrt(double(n_res * cfg.n_layer));
  }
  return p;
}

Block::Block(const ModelConfig& cfg, MixerKind kind, Generator& gen, DType param_dtype)
    : mixer_kind(kind), residual_in_fp32(cfg.residual_in_fp32) {
  InitPlan plan = init_plan(cfg);
  norm = register_module("norm", std::make_shared<Norm>(cfg.norm, cfg.d_model, cfg.norm_eps, param_dtype));
  if (kind == MixerKind::mamba)
    mixer = register_module("mixer", std::make_shared<MambaMixer>(cfg, gen, plan.linear, plan.residual,
                                                                  param_dtype));
  else
    mixer = register_module("mixer", std::make_shared<Attention>(cfg, gen, plan.linear, plan.residual,
                                                                 param_dtype));
  if (cfg.mlp != MlpKind::none) {
    norm2 = register_module("norm2", std::make_shared<Norm>(cfg.norm, cfg.d_model, cfg.norm_eps, param_dtype));
    mlp = register_module("mlp", std::make_shared<MLP>(cfg, gen, plan.linear, plan.residual, param_dtype));
  }
}

std::pair<Variable, Variable> Block::forward(const Variable& hidden, const Variable& residual,
                                             const MixerContext& context) const {
  return forward(hidden, residual, [&](const Variable& x) { return mixer->forward(x, context); });
}

std::pair<Variable, Variable> Block::forward(const Variable& hidden, const Variable& residual,
                                             const std::function<Variable(const Variable&)>& mix) const {
  auto keep = [&](const Variable& r) { return residual_in_fp32 ? r : to_compute(r); };
  auto a = norm->forward_residual(hidden, residual);
  Variable h = mix(to_compute(a.normed));
  Variable r = keep(a.residual);
  if (mlp) {
    auto b = norm2->forward_residual(h, r);
    h = mlp->forward(to_compute(b.normed));
    r = keep(b.residual);
  }
  return {h, r};
}

int64_t Block::matmul_parameters() const {
  int64_t n = mixer->matmul_parameters();
  if (mlp) n += mlp->fc1->weight->numel() + mlp->fc2->weight->numel();
  return n;
}

Backbone::Backbone(const ModelConfig& cfg, Generator& gen, DType param_dtype)
    : sinusoidal_positions(cfg.sinusoidal_positions()) {
  InitPlan plan = init_plan(cfg);
  embedding = register_module("embedding", std::make_shared<Embedding>(cfg.padded_vocab_size(), cfg.d_model,
                                                                       gen, plan.embedding_std, param_dtype));
  if (cfg.learned_positions())
    pos_embedding = register_module(
        "pos_embedding", std::make_shared<Embedding>(cfg.attention.max_seq_len, cfg.d_model, gen,
                                                     plan.embedding_std, param_dtype));
  layers = register_module("layers", std::make_shared<ModuleList>());
  for (MixerKind kind : cfg.layer_mixers())
    blocks.push_back(layers->push_back(std::make_shared<Block>(cfg, kind, gen, param_dtype)));
  norm_f = register_module("norm_f", std::make_shared<Norm>(cfg.norm, cfg.d_model, cfg.norm_eps, param_dtype));
}

Variable Backbone::add_positions(const Variable& h, const Tensor& positions) const {
  if (pos_embedding) return autograd::add(h, pos_embedding->forward(positions));
  if (sinusoidal_positions)
    return autograd::add(h, Variable(kernels::sinusoidal_positions(positions, h.size(-1), h.dtype())));
  return h;
}

Head::Head(const ModelConfig& cfg, const std::shared_ptr<Parameter>& tied, Generator& gen,
           const InitPlan& plan, DType param_dtype) {
  if (tied) {
    weight = tied;
    register_alias("weight", tied);
  } else {
    int64_t v = cfg.padded_vocab_size(), d = cfg.d_model;
    Tensor w = plan.linear.std > 0 ? init_normal({v, d}, plan.linear.std, gen, param_dtype)
                                   : init_kaiming_uniform({v, d}, d, gen, param_dtype);
    weight = register_parameter("weight", w);
  }
}

DType resolve_compute_dtype(const ModelConfig& cfg, Device device) {
  if (cfg.dtype == ComputeDType::f64) {
    COIL_CHECK(device.is_cpu(), "model.dtype f64 is CPU-only (for gradient checks), got device {}",
               device.str());
    return DType::f64;
  }
  if (cfg.dtype == ComputeDType::f32) return DType::f32;
  if (cfg.dtype == ComputeDType::bf16) return DType::bf16;
  return device.is_cuda() ? DType::bf16 : DType::f32;
}

LanguageModel::LanguageModel(const ModelConfig& cfg, uint64_t seed) : cfg_(cfg) {
  cfg_.validate();
  DType param_dtype = cfg_.dtype == ComputeDType::f64 ? DType::f64 : DType::f32;
  Generator gen(seed);
  backbone = register_module("backbone", std::make_shared<Backbone>(cfg_, gen, param_dtype));
  lm_head = register_module("lm_head",
                            std::make_shared<Head>(cfg_, cfg_.tie_embeddings ? backbone->embedding->weight : nullptr,
                                                   gen, init_plan(cfg_), param_dtype));
  set_compute_dtype(resolve_compute_dtype(cfg_, Device::cpu()));
}

void LanguageModel::to(Device device) {
  DType cd = resolve_compute_dtype(cfg_, device);
  Module::to(device);
  set_compute_dtype(cd);
}

Variable LanguageModel::hidden_states(const Tensor& tokens, const SequenceContext& context) const {
  COIL_CHECK(tokens.dim() == 2 && (tokens.dtype() == DType::i32 || tokens.dtype() == DType::i64),
             "LanguageModel: tokens must be [B, T] i32 or i64, got {}", describe(tokens));
  COIL_CHECK(tokens.device() == device(), "LanguageModel: tokens on {} but the model is on {}",
             describe(tokens), device().str());
  int64_t T = tokens.size(1);
  Variable h = backbone->embedding->forward(tokens);
  if (backbone->pos_embedding)
    COIL_CHECK(T <= cfg_.attention.max_seq_len,
               "LanguageModel: sequence length {} exceeds model.attention.max_seq_len ({})", T,
               cfg_.attention.max_seq_len);
  if (backbone->pos_embedding || backbone->sinusoidal_positions) {
    Tensor pos = context.seq_idx.defined() ? kernels::document_positions(context.seq_idx)
                                           : Tensor::arange(T, DType::i64, tokens.device());
    h = backbone->add_positions(h, pos);
  }
  if (!cfg_.residual_in_fp32) h = to_compute(h);
  const size_t n = backbone->blocks.size();
  COIL_CHECK(!context.initial || context.initial->size() == n,
             "LanguageModel: the initial state has {} layers but the model has {}", context.initial->size(), n);
  if (context.final) context.final->assign(n, MambaState{});
  Variable residual;
  for (size_t i = 0; i < n; ++i) {
    MixerContext mc;
    mc.seq_idx = context.seq_idx;
    mc.initial = context.initial ? &(*context.initial)[i] : nullptr;
    mc.final = context.final ? &(*context.final)[i] : nullptr;
    std::tie(h, residual) = backbone->blocks[i]->forward(h, residual, mc);
  }
  return backbone->norm_f->forward_residual(h, residual).normed;
}

ModelState state_rows(const ModelState& state, int64_t begin, int64_t end) {
  ModelState out(state.size());
  for (size_t i = 0; i < state.size(); ++i)
    for (auto [src, dst] : {std::pair{&state[i].conv, &out[i].conv}, std::pair{&state[i].ssm, &out[i].ssm}})
      if (src->defined()) *dst = src->narrow0(begin, end);
  return out;
}

void zero_state_row(const ModelState& state, int64_t row) {
  for (const MambaState& s : state)
    for (const Tensor* t : {&s.conv, &s.ssm})
      if (t->defined()) t->narrow0(row, row + 1).zero_();
}

ModelState LanguageModel::zero_state(int64_t batch) const {
  ModelState s(backbone->blocks.size());
  for (size_t i = 0; i < s.size(); ++i)
    if (auto* m = dynamic_cast<const MambaMixer*>(backbone->blocks[i]->mixer.get())) s[i] = m->zero_state(batch);
  return s;
}

Variable LanguageModel::forward(const Tensor& tokens, const SequenceContext& context) const {
  Variable h = to_compute(hidden_states(tokens, context));
  return autograd::linear(h, lm_head->weight->compute(compute_dtype()));
}

Variable LanguageModel::loss(const Tensor& tokens, const Tensor& targets, int64_t ignore_index,
                             const SequenceContext& context) const {
  COIL_CHECK(targets.shape() == tokens.shape(),
             "LanguageModel::loss: targets {} must have the shape of tokens {}", describe(targets),
             describe(tokens));
  Variable h = to_compute(hidden_states(tokens, context));
  int64_t n = tokens.numel();
  h = autograd::reshape(h, {n, cfg_.d_model});
  return autograd::linear_cross_entropy(h, lm_head->weight->compute(compute_dtype()),
                                        targets.reshape({n}), ignore_index);
}

int64_t LanguageModel::num_parameters(bool include_embeddings) const {
  int64_t n = parameter_count();
  if (include_embeddings) return n;
  n -= backbone->embedding->weight->numel();
  if (backbone->pos_embedding) n -= backbone->pos_embedding->weight->numel();
  if (!cfg_.tie_embeddings) n -= lm_head->weight->numel();
  return n;
}

int64_t LanguageModel::matmul_parameters() const {
  int64_t n = lm_head->weight->numel();
  for (auto& b : backbone->blocks) n += b->matmul_parameters();
  return n;
}

double LanguageModel::flops_per_token(int64_t seq_len) const {
  return training_flops_per_token(cfg_, seq_len);
}

}  // namespace coil::layers
