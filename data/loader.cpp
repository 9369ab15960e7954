#include "data/loader.h"

#include <algorithm>
#include <cmath>

#include "core/random.h"

namespace coil::data {
namespace {

constexpr uint64_t kValSeedMix = 0x9E3779B97F4A7C15ull;  // validation examples use another key

// A 64-bit draw for (seed, example): one Philox block of its own.
uint64_t draw64(uint64_t seed, uint64_t example) {
  auto r = philox4x32({uint32_t(example), uint32_t(example >> 32), 0x7E57u, 0u}, seed);
  return (uint64_t(r[0]) << 32) | r[1];
}

// The i-th element (i < n) of a permutation of [0, n) drawn from (seed, pass): a balanced
// Feistel network on the smallest even number of bits that holds n (Philox as its round
// function; each round is a bijection, so the network is one), walking the cycle until the
// value falls inside [0, n), which takes fewer than 4 rounds of the network on average.
uint64_t permuted_index(uint64_t i, uint64_t n, uint64_t seed, uint64_t pass) {
  int half = 1;
  while ((uint64_t(1) << (2 * half)) < n) ++half;
  const uint64_t mask = (uint64_t(1) << half) - 1;
  do {
    uint64_t left = i >> half, right = i & mask;
    for (uint32_t round = 0; round < 6; ++round) {
      auto r = philox4x32({uint32_t(right), round, uint32_t(pass), uint32_t(pass >> 32)}, seed);  // right < 2^32
      uint64_t f = ((uint64_t(r[0]) << 32) | r[1]) & mask;
      std::swap(left, right);
      right ^= f;
    }
    i = (left << half) | right;
  } while (i >= n);
  return i;
}

}  // namespace

int64_t Batch::target_count() const {
  const int64_t* t = targets.data<int64_t>();
  int64_t n = 0;
  for (int64_t i = 0; i < targets.numel(); ++i) n += t[i] != kIgnoreIndex;
  return n;
}

void synthetic_example(const DataOptions& o, uint64_t seed, uint64_t example, int64_t* inputs, int64_t* targets) {
  const int64_t L = o.seq_len;
  Generator gen(seed, example << 32);  // 2^32 words of the stream per example
  std::vector<int64_t> x(size_t(L + 1));
  if (o.task == "selective_copying") {
    const int64_t K = o.copy_tokens, V = o.task_vocab, R = L - K;
    COIL_CHECK(R >= K, "selective_copying: seq_len {} must be at least 2 * copy_tokens = {}", L, 2 * K);
    std::vector<int64_t> positions(static_cast<size_t>(R));
    for (int64_t i = 0; i < R; ++i) positions[size_t(i)] = i;
    for (int64_t i = 0; i < K; ++i) {  // partial Fisher-Yates: K distinct positions
      int64_t j = i + int64_t(gen.next_below(uint64_t(R - i)));
      std::swap(positions[size_t(i)], positions[size_t(j)]);
    }
    std::sort(positions.begin(), positions.begin() + K);
    std::fill(x.begin(), x.end(), 0);
    for (int64_t i = 0; i < K; ++i) {
      int64_t token = 1 + int64_t(gen.next_below(uint64_t(V)));
      x[size_t(positions[size_t(i)])] = token;
      x[size_t(R + 1 + i)] = token;
    }
    x[size_t(R)] = V + 1;
    for (int64_t t = 0; t < L; ++t) {
      inputs[t] = x[size_t(t)];
      targets[t] = t >= R ? x[size_t(t + 1)] : kIgnoreIndex;
    }
  } else if (o.task == "induction_heads") {
    const int64_t V = o.task_vocab, trigger = V;
    COIL_CHECK(L >= 4, "induction_heads: seq_len {} must be at least 4", L);
    for (int64_t t = 0; t <= L; ++t) x[size_t(t)] = int64_t(gen.next_below(uint64_t(V)));
    int64_t p = int64_t(gen.next_below(uint64_t(L - 2)));  // trigger in [0, L-3], key after it
    int64_t key = int64_t(gen.next_below(uint64_t(V)));
    x[size_t(p)] = trigger;
    x[size_t(p + 1)] = key;
    x[size_t(L - 1)] = trigger;
    x[size_t(L)] = key;
    for (int64_t t = 0; t < L; ++t) {
      inputs[t] = x[size_t(t)];
      targets[t] = t == L - 1 ? key : kIgnoreIndex;
    }
  } else if (o.task == "random") {
    for (int64_t t = 0; t <= L; ++t) x[size_t(t)] = int64_t(gen.next_below(uint64_t(o.vocab_size)));
    for (int64_t t = 0; t < L; ++t) inputs[t] = x[size_t(t)], targets[t] = x[size_t(t + 1)];
  } else {
    fail("data: unknown synthetic task '{}' (selective_copying, induction_heads, random)", o.task);
  }
}

DataLoader::DataLoader(const DataOptions& options) : options_(options) {
  const auto& o = options_;
  COIL_CHECK(o.seq_len >= 1, "data: seq_len must be positive, got {}", o.seq_len);
  COIL_CHECK(o.world_size >= 1 && o.rank >= 0 && o.rank < o.world_size, "data: rank {} outside a world of {}", o.rank,
             o.world_size);
  buffer_.resize(size_t(o.seq_len + 1));
  if (o.kind == "synthetic") {
    if (o.task == "selective_copying" && o.task_vocab + 2 > o.vocab_size)
      fail("data: selective_copying uses {} token ids but the model's vocabulary has {}", o.task_vocab + 2, o.vocab_size);
    if (o.task == "induction_heads" && o.task_vocab + 1 > o.vocab_size)
      fail("data: induction_heads uses {} token ids but the model's vocabulary has {}", o.task_vocab + 1, o.vocab_size);
    std::vector<int64_t> in(size_t(o.seq_len)), tg(size_t(o.seq_len));
    synthetic_example(o, o.seed, 0, in.data(), tg.data());  // checks the task's parameters
    return;
  }
  COIL_CHECK(o.kind == "tokens", "data: unknown data.kind '{}' (synthetic or tokens)", o.kind);
  COIL_CHECK(o.sampling == "random" || o.sampling == "shuffled", "data: unknown sampling '{}' (random or shuffled)",
             o.sampling);
  const int64_t W = o.seq_len + 1;
  stride_ = o.sampling == "shuffled" ? o.seq_len : 1;
  dataset_ = std::make_unique<TokenDataset>(o.path, o.vocab_size, o.check_ids);
  if (dataset_->total_tokens() <= (int64_t(1) << 26) && o.check_ids) dataset_->check_all_ids();
  const auto& files = dataset_->files();
  starts_cum_.assign(files.size() + 1, 0);
  train_end_.assign(files.size(), 0);
  for (size_t f = 0; f < files.size(); ++f) {
    int64_t n = files[f].num_tokens;
    int64_t held = o.val_path.empty() ? int64_t(std::ceil(o.val_fraction * double(n))) : 0;
    train_end_[f] = n - held;
    starts_cum_[f + 1] = starts_cum_[f] + (train_end_[f] >= W ? (train_end_[f] - W) / stride_ + 1 : 0);
    if (o.val_path.empty())
      for (int64_t s = train_end_[f]; s + W <= n; s += W) val_windows_.emplace_back(f, s);
  }
  total_starts_ = starts_cum_.back();
  if (total_starts_ == 0)
    fail("data: '{}' holds {} tokens, too few for one training window of seq_len + 1 = {} tokens per file (after "
         "holding out val_fraction {})",
         o.path, dataset_->total_tokens(), W, o.val_fraction);
  if (!o.val_path.empty()) {
    val_dataset_ = std::make_unique<TokenDataset>(o.val_path, o.vocab_size, o.check_ids);
    const auto& vf = val_dataset_->files();
    if (vf[0].tokenizer != files[0].tokenizer)
      fail("data: validation files use tokenizer '{}' but training files use '{}'", vf[0].tokenizer,
           files[0].tokenizer);
    for (size_t f = 0; f < vf.size(); ++f)
      for (int64_t s = 0; s + W <= vf[f].num_tokens; s += W) val_windows_.emplace_back(f, s);
  }
}

void DataLoader::read_window(const TokenDataset& ds, size_t file, int64_t start, int64_t* inputs,
                             int64_t* targets) const {
  std::vector<int64_t> w(size_t(options_.seq_len + 1));
  ds.read(file, start, options_.seq_len + 1, w.data());
  std::copy(w.begin(), w.end() - 1, inputs);
  std::copy(w.begin() + 1, w.end(), targets);
}

void DataLoader::window(uint64_t example, int64_t* inputs, int64_t* targets) {
  const auto& o = options_;
  if (o.kind == "synthetic") {
    synthetic_example(o, o.seed, example, inputs, targets);
    return;
  }
  const uint64_t n = uint64_t(total_starts_);
  int64_t u = o.sampling == "shuffled" ? int64_t(permuted_index(example % n, n, o.seed, example / n))
                                       : int64_t(draw64(o.seed, example) % n);
  size_t f = size_t(std::upper_bound(starts_cum_.begin(), starts_cum_.end(), u) - starts_cum_.begin() - 1);
  read_window(*dataset_, f, (u - starts_cum_[f]) * stride_, inputs, targets);
}

Batch DataLoader::next_train(int64_t batch_size) {
  const int64_t L = options_.seq_len;
  Batch b{Tensor::empty({batch_size, L}, DType::i64), Tensor::empty({batch_size, L}, DType::i64)};
  int64_t* in = b.inputs.data<int64_t>();
  int64_t* tg = b.targets.data<int64_t>();
  for (int64_t i = 0; i < batch_size; ++i) {
    uint64_t example = drawn_ * uint64_t(options_.world_size) + uint64_t(options_.rank);
    window(example, in + i * L, tg + i * L);
    ++drawn_;
  }
  return b;
}

int64_t DataLoader::num_val_batches(int64_t batch_size) const {
  if (options_.kind == "synthetic") return INT64_MAX;
  return int64_t(val_windows_.size()) / batch_size;
}

Batch DataLoader::val_batch(int64_t index, int64_t batch_size) const {
  const int64_t L = options_.seq_len;
  Batch b{Tensor::empty({batch_size, L}, DType::i64), Tensor::empty({batch_size, L}, DType::i64)};
  int64_t* in = b.inputs.data<int64_t>();
  int64_t* tg = b.targets.data<int64_t>();
  if (options_.kind == "synthetic") {
    for (int64_t i = 0; i < batch_size; ++i)
      synthetic_example(options_, options_.seed ^ kValSeedMix, uint64_t(index * batch_size + i), in + i * L,
                        tg + i * L);
    return b;
  }
  COIL_CHECK(index >= 0 && index < num_val_batches(batch_size),
             "data: validation batch {} of {} windows requested but only {} batches of {} exist", index,
             val_windows_.size(), num_val_batches(batch_size), batch_size);
  const TokenDataset& ds = val_dataset_ ? *val_dataset_ : *dataset_;
  for (int64_t i = 0; i < batch_size; ++i) {
    auto [f, s] = val_windows_[size_t(index * batch_size + i)];
    read_window(ds, f, s, in + i * L, tg + i * L);
  }
  return b;
}

void DataLoader::set_state(const SamplerState& state) {
  COIL_CHECK(state.seed == options_.seed,
             "data: the checkpoint's sampler was seeded with {} but this run's seed is {} (train.seed)", state.seed,
             options_.seed);
  const uint64_t world = uint64_t(options_.world_size);
  drawn_ = (state.examples_drawn + world - 1) / world;
}

bool DataLoader::has_accuracy() const {
  return options_.kind == "synthetic" && (options_.task == "selective_copying" || options_.task == "induction_heads");
}

std::string DataLoader::describe() const {
  const auto& o = options_;
  if (o.kind == "synthetic") {
    if (o.task == "selective_copying")
      return fmt::format("synthetic selective copying: {} of {} data tokens to copy in {} positions", o.copy_tokens,
                         o.task_vocab, o.seq_len);
    if (o.task == "induction_heads")
      return fmt::format("synthetic induction heads: {} data tokens, {} positions", o.task_vocab, o.seq_len);
    return fmt::format("synthetic random tokens: vocabulary {}, {} positions", o.vocab_size, o.seq_len);
  }
  return fmt::format("{} token file(s) '{}': {} tokens ({} tokenizer), {} training windows ({}), {} validation windows",
                     dataset_->files().size(), o.path, dataset_->total_tokens(), dataset_->files()[0].tokenizer,
                     total_starts_,
                     o.sampling == "shuffled" ? "shuffled, consecutive: one pass over the training tokens"
                                              : "random positions",
                     val_windows_.size());
}

}  // namespace coil::data
