#include "train/evaluation.h"

#include <cmath>

#include "autograd/variable.h"
#include "kernels/embedding.h"
#include "train/checkpoint.h"
#include "train/hf_interop.h"

namespace coil::train {

data::DataOptions data_options(const Config& c, int rank, int world) {
  data::DataOptions o;
  o.kind = c.data.kind;
  o.task = c.data.task;
  o.path = c.data.path;
  o.val_path = c.data.val_path;
  o.val_fraction = c.data.val_fraction;
  o.task_vocab = c.data.task_vocab;
  o.copy_tokens = c.data.copy_tokens;
  o.check_ids = c.data.check_ids;
  o.vocab_size = c.model.config.vocab_size;
  o.seq_len = c.train.seq_len;
  o.seed = uint64_t(c.train.seed);
  o.rank = rank;
  o.world_size = world;
  o.sampler = c.data.sampler;
  o.slots = c.train.micro_batch * c.grad_accum(world) * world;
  o.reset_at_eot = c.data.reset_at_eot;
  return o;
}

// The documents of a batch on the device (none without data.reset_at_eot).
layers::SequenceContext documents_of(const data::Batch& b, Device device) {
  layers::SequenceContext c;
  if (b.seq_idx.defined()) c.seq_idx = b.seq_idx.to(device);
  return c;
}

// Token files of the built-in byte-level tokenizer: one token is one byte (end-of-text ids
// count as one), so bits per byte is the loss in bits.
bool byte_level(const data::DataLoader& loader) {
  return loader.dataset() && loader.dataset()->files()[0].tokenizer == "byte";
}

EvalBatches eval_batches(const data::DataLoader& loader, int64_t batches, int64_t micro_batch) {
  EvalBatches out;
  const bool all = batches == EvalSection::kAll;
  const int64_t whole = loader.num_val_batches(micro_batch);
  for (int64_t i = 0; i < (all ? whole : std::min(batches, whole)); ++i) out.emplace_back(i, micro_batch);
  if (all)
    for (int64_t w = whole * micro_batch; w < loader.num_val_batches(1); ++w) out.emplace_back(w, 1);
  return out;
}

EvalTotals run_eval(const layers::LanguageModel& model, const data::DataLoader& loader, const EvalBatches& batches,
                    Device device, int rank, int world) {
  autograd::NoGradGuard no_grad;
  EvalTotals t;
  t.has_accuracy = loader.has_accuracy();
  for (size_t i = size_t(rank); i < batches.size(); i += size_t(world)) {
    data::Batch b = loader.val_batch(batches[i].first, batches[i].second);
    int64_t count = b.target_count();
    if (count == 0) continue;
    Tensor inputs = b.inputs.to(device);
    const layers::SequenceContext docs = documents_of(b, device);
    if (!t.has_accuracy) {
      Tensor targets = b.targets.to(device);
      double l = model.loss(inputs, targets, data::kIgnoreIndex, docs).value().item();
      t.loss_sum += l * double(count);
      t.targets += count;
      continue;
    }
    // Accuracy needs the logits of the answer positions: those rows are gathered on the
    // device and only they go to the host (a long sequence has few answers), where the
    // log-softmax and the argmax are taken.
    const int64_t* tg = b.targets.data<int64_t>();
    std::vector<int64_t> positions, answers;
    for (int64_t p = 0; p < b.targets.numel(); ++p)
      if (tg[p] != data::kIgnoreIndex) positions.push_back(p), answers.push_back(tg[p]);
    Tensor logits = model.forward(inputs, docs).value();
    const int64_t V = logits.size(-1);
    Tensor rows = kernels::embedding(logits.reshape({b.targets.numel(), V}),
                                     Tensor::from_vector(positions, {count}, DType::i64, device))
                      .to(Device::cpu(), DType::f32);
    const float* lg = rows.data<float>();
    for (int64_t i = 0; i < count; ++i) {
      const float* row = lg + i * V;
      const int64_t answer = answers[size_t(i)];
      int64_t arg = 0;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v)
        if (row[v] > mx) mx = row[v], arg = v;
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
      t.loss_sum += mx + std::log(sum) - double(row[answer]);
      t.correct += arg == answer;
      t.targets += 1;
    }
  }
  return t;
}

EvalModel load_eval_model(const Config& config_in, const std::string& checkpoint,
                          const std::function<void(const std::string&)>& print) {
  EvalModel m;
  m.config = config_in;
  m.device = resolve_device(m.config.train.device);
  resolve_for_device(m.config, m.device);
  m.model = std::make_unique<layers::LanguageModel>(m.config.model.config, uint64_t(m.config.train.seed));
  Checkpoint c;
  std::string path = checkpoint;
  auto same_model = [&](const Checkpoint& k) { check_same_model(k, m.config.model.config); };
  auto warn = [&](const std::string& w) {
    if (print) print("warning: " + w);
  };
  if (!checkpoint.empty()) {
    c = read_checkpoint(checkpoint);
    try {
      same_model(c);
    } catch (const Error& e) {
      fail("eval: checkpoint '{}' cannot be used: {}", checkpoint, e.what());
    }
  } else if (!load_latest(m.config.run_dir(), c, &path, warn, same_model)) {
    if (!list_checkpoints(m.config.run_dir()).empty())
      fail("eval: no checkpoint of {} can be used: each is damaged or holds another model (the warnings say why)",
           m.config.run_dir());
    path.clear();
    if (!m.config.model.init_from.empty()) {
      c.params = initial_weights(m.config.model.init_from, m.config.model.config, warn);
      path = m.config.model.init_from;
    } else {
      warn(fmt::format("{} has no checkpoint; evaluating the initial weights", m.config.run_dir()));
    }
  }
  if (!path.empty()) {
    load_parameters(*m.model, c.params);
    m.step = c.state.step;
    m.checkpoint = path;
  }
  m.model->to(m.device);
  m.model->eval();
  return m;
}

EvalResult evaluate(const Config& config_in, const std::string& checkpoint,
                    const std::function<void(const std::string&)>& print) {
  COIL_CHECK(config_in.eval.batches != 0,
             "eval: eval.batches is 0 in this config (it never evaluates): give a number of batches, or all for the "
             "whole held-out split (coil eval --batches N|all)");
  EvalModel m = load_eval_model(config_in, checkpoint, print);
  const Config& config = m.config;
  EvalResult r;
  r.step = m.step;
  r.checkpoint = m.checkpoint;
  data::DataLoader loader(data_options(config, 0, 1));
  const EvalBatches batches = eval_batches(loader, config.eval.batches, config.train.micro_batch);
  COIL_CHECK(!batches.empty(), "eval: the data holds no validation windows (data.val_fraction or data.val_path)");
  EvalTotals t = run_eval(*m.model, loader, batches, m.device);
  r.loss = t.loss();
  r.perplexity = std::exp(t.loss());
  r.accuracy = t.accuracy();
  if (byte_level(loader)) r.bits_per_byte = t.loss() / std::log(2.0);
  r.batches = int64_t(batches.size());
  for (auto& b : batches) r.windows += b.second;
  r.targets = t.targets;
  return r;
}

}  // namespace coil::train
