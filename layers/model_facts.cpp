#include "layers/model_facts.h"

#include <algorithm>

#include <fmt/format.h>

namespace coil::layers {

std::vector<std::pair<std::string, Shape>> parameter_shapes(const ModelConfig& m) {
  std::vector<std::pair<std::string, Shape>> out;
  const int64_t d = m.d_model, V = m.padded_vocab_size(), di = m.d_inner(), N = m.mamba.d_state, R = m.dt_rank();
  const bool ln = m.norm == NormKind::layernorm;
  auto norm = [&](const std::string& p) {
    out.push_back({p + ".weight", {d}});
    if (ln) out.push_back({p + ".bias", {d}});
  };
  auto linear = [&](const std::string& p, int64_t o, int64_t i, bool bias) {
    out.push_back({p + ".weight", {o, i}});
    if (bias) out.push_back({p + ".bias", {o}});
  };
  out.push_back({"backbone.embedding.weight", {V, d}});
  if (m.learned_positions())
    out.push_back({"backbone.pos_embedding.weight", {m.attention.max_seq_len, d}});
  auto mixers = m.layer_mixers();
  for (size_t i = 0; i < mixers.size(); ++i) {
    std::string p = fmt::format("backbone.layers.{}.", i);
    norm(p + "norm");
    if (mixers[i] == MixerKind::mamba) {
      out.push_back({p + "mixer.A_log", {di, N}});
      out.push_back({p + "mixer.D", {di}});
      if (!m.mamba.selective) {
        out.push_back({p + "mixer.dt_bias", {di}});
        out.push_back({p + "mixer.B", {N}});
        out.push_back({p + "mixer.C", {N}});
      }
      linear(p + "mixer.in_proj", 2 * di, d, m.bias);
      out.push_back({p + "mixer.conv1d.weight", {di, 1, m.mamba.d_conv}});
      if (m.mamba.conv_bias) out.push_back({p + "mixer.conv1d.bias", {di}});
      if (m.mamba.selective) {
        linear(p + "mixer.x_proj", R + 2 * N, di, false);
        linear(p + "mixer.dt_proj", di, R, true);
      }
      linear(p + "mixer.out_proj", d, di, m.bias);
    } else {
      linear(p + "mixer.in_proj", 3 * d, d, m.bias);
      linear(p + "mixer.out_proj", d, d, m.bias);
    }
    if (m.mlp != MlpKind::none) {
      norm(p + "norm2");
      int64_t h = m.mlp_hidden_size();
      linear(p + "mlp.fc1", m.mlp == MlpKind::swiglu ? 2 * h : h, d, m.bias);
      linear(p + "mlp.fc2", d, h, m.bias);
    }
  }
  norm("backbone.norm_f");
  if (!m.tie_embeddings) out.push_back({"lm_head.weight", {V, d}});
  return out;
}

ParameterCounts parameter_counts(const ModelConfig& m) {
  ParameterCounts c;
  int64_t embed = 0;
  for (auto& [name, shape] : parameter_shapes(m)) {
    int64_t n = numel(shape);
    c.total += n;
    if (name == "backbone.embedding.weight" || name == "backbone.pos_embedding.weight" || name == "lm_head.weight")
      embed += n;
    bool matmul = shape.size() >= 2 && name.find("A_log") == std::string::npos &&
                  name.find("embedding") == std::string::npos && name != "lm_head.weight";
    if (matmul) c.matmul += n;
  }
  c.matmul += m.padded_vocab_size() * m.d_model;  // the head (tied or not)
  c.non_embedding = c.total - embed;
  return c;
}

double training_flops_per_token(const ModelConfig& m, int64_t seq_len) {
  double flops = 6.0 * double(parameter_counts(m).matmul);
  for (MixerKind kind : m.layer_mixers()) {
    if (kind == MixerKind::attention) {
      double ctx = double(seq_len);
      if (m.attention.window > 0) ctx = std::min(ctx, double(m.attention.window));
      flops += 12.0 * double(m.d_model) * ctx;
    } else {
      flops += 3.0 * (9.0 * double(m.d_inner()) * double(m.mamba.d_state) + 2.0 * double(m.d_inner()));
    }
  }
  return flops;
}

MemoryEstimate memory_estimate(const ModelConfig& m, const TrainingShape& shape) {
  MemoryEstimate e;
  const double act_bytes = shape.bf16_compute ? 2 : 4;
  const double P = double(parameter_counts(m).total);
  e.weights_bytes = 4 * P + (shape.bf16_compute ? 2 * P : 0);  // + the bf16 compute copy
  e.gradient_bytes = 4 * P;
  e.optimizer_bytes = 8 * P / shape.optimizer_shards;  // ZeRO-1: this rank's shard
  const int64_t d = m.d_model, di = m.d_inner(), N = m.mamba.d_state, R = m.dt_rank(), h = m.mlp_hidden_size();
  double per_token = 0;
  for (MixerKind kind : m.layer_mixers()) {
    double elems = 0;
    if (kind == MixerKind::mamba)  // norm out, in_proj out (x, z), conv out, x_proj out, delta, scan out
      elems = double(d + 2 * di + di + (R + 2 * N) + di + di);
    else  // norm out, q k v, attention out (+ logsumexp)
      elems = double(d + 3 * d + d) + double(m.attention.n_head);
    if (m.mlp == MlpKind::swiglu) elems += double(d + 2 * h + h);
    if (m.mlp == MlpKind::gelu) elems += double(d + 2 * h);
    per_token += elems * act_bytes + 4.0 * double(d) * (m.mlp != MlpKind::none ? 2 : 1);  // + fp32 residual
  }
  per_token += 4.0 * double(d) + act_bytes * double(d);  // final norm; the loss is chunked
  e.activation_bytes = per_token * double(shape.micro_batch * shape.seq_len);
  return e;
}

}  // namespace coil::layers
