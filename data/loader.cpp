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
  if (o.task == "selective_copying") {
    const int64_t K = o.copy_tokens, V = o.task_vocab, R = L - K, marker = V + 1;
    COIL_CHECK(R >= K, "selective_copying: seq_len {} must be at least 2 * copy_tokens = {}", L, 2 * K);
    std::vector<int64_t> positions(static_cast<size_t>(R));
    for (int64_t i = 0; i < R; ++i) positions[size_t(i)] = i;
    for (int64_t i = 0; i < K; ++i) {  // partial Fisher-Yates: K distinct positions
      int64_t j = i + int64_t(gen.next_below(uint64_t(R - i)));
      std::swap(positions[size_t(i)], positions[size_t(j)]);
    }
    std::sort(positions.begin(), positions.begin() + K);
    std::fill(inputs, inputs + R, 0);
    std::fill(inputs + R, inputs + L, marker);
    std::fill(targets, targets + R, kIgnoreIndex);
    for (int64_t i = 0; i < K; ++i) {
      int64_t token = 1 + int64_t(gen.next_below(uint64_t(V)));
      inputs[positions[size_t(i)]] = token;
      targets[R + i] = token;
    }
  } else if (o.task == "induction_heads") {
    const int64_t V = o.task_vocab, trigger = V;
    COIL_CHECK(L >= 4, "induction_heads: seq_len {} must be at least 4", L);
    for (int64_t t = 0; t < L; ++t) inputs[t] = int64_t(gen.next_below(uint64_t(V)));
    int64_t p = int64_t(gen.next_below(uint64_t(L - 3)));  // trigger in [0, L-4], key after it
    int64_t key = int64_t(gen.next_below(uint64_t(V)));
    inputs[p] = trigger;
    inputs[p + 1] = key;
    inputs[L - 1] = trigger;
    std::fill(targets, targets + L, kIgnoreIndex);
    targets[L - 1] = key;
  } else if (o.task == "random") {
    std::vector<int64_t> x(size_t(L + 1));
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
  COIL_CHECK(o.sampler == "random" || o.sampler == "shuffled" || o.sampler == "sequential",
             "data: unknown sampler '{}' (random, shuffled or sequential)", o.sampler);
  if (o.kind == "synthetic") {
    COIL_CHECK(!o.reset_at_eot,
               "data: reset_at_eot needs token files whose documents are marked (an eot_token or /doc_offsets); "
               "a synthetic {} example is one window with no documents inside",
               o.task);
    COIL_CHECK(o.sampler == "random",
               "data: the {} sampler orders the windows of a token stream, but synthetic {} examples are "
               "independent draws with no stream to follow",
               o.sampler, o.task);
    if (o.task == "selective_copying" && o.task_vocab + 2 > o.vocab_size)
      fail("data: selective_copying uses {} token ids but the model's vocabulary has {}", o.task_vocab + 2, o.vocab_size);
    if (o.task == "induction_heads" && o.task_vocab + 1 > o.vocab_size)
      fail("data: induction_heads uses {} token ids but the model's vocabulary has {}", o.task_vocab + 1, o.vocab_size);
    std::vector<int64_t> in(size_t(o.seq_len)), tg(size_t(o.seq_len));
    synthetic_example(o, o.seed, 0, in.data(), tg.data());  // checks the task's parameters
    return;
  }
  COIL_CHECK(o.kind == "tokens", "data: unknown data.kind '{}' (synthetic or tokens)", o.kind);
  const int64_t W = o.seq_len + 1;
  stride_ = o.sampler == "shuffled" ? o.seq_len : 1;
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
  if (o.sampler == "sequential") {
    COIL_CHECK(o.slots >= 1, "data: the sequential sampler needs at least one sequence slot, got {}", o.slots);
    windows_cum_.assign(files.size() + 1, 0);
    for (size_t f = 0; f < files.size(); ++f)
      windows_cum_[f + 1] = windows_cum_[f] + (train_end_[f] >= W ? (train_end_[f] - 1) / o.seq_len : 0);
    run_ = windows_cum_.back() / o.slots;
    if (run_ == 0)
      fail("data: the sequential sampler gives each of {} sequence slots (micro_batch x accumulation x ranks) its own "
           "run of consecutive windows, but '{}' holds only {} non-overlapping training windows of seq_len + 1 = {} "
           "tokens; use more data, a shorter train.seq_len or fewer slots",
           o.slots, o.path, windows_cum_.back(), W);
  }
  if (o.reset_at_eot) check_documents_marked(*dataset_);
  if (!o.val_path.empty()) {
    val_dataset_ = std::make_unique<TokenDataset>(o.val_path, o.vocab_size, o.check_ids);
    if (o.reset_at_eot) check_documents_marked(*val_dataset_);
    const auto& vf = val_dataset_->files();
    if (vf[0].tokenizer != files[0].tokenizer)
      fail("data: validation files use tokenizer '{}' but training files use '{}'", vf[0].tokenizer,
           files[0].tokenizer);
    for (size_t f = 0; f < vf.size(); ++f)
      for (int64_t s = 0; s + W <= vf[f].num_tokens; s += W) val_windows_.emplace_back(f, s);
  }
}

Batch DataLoader::empty_batch(int64_t batch_size) const {
  const int64_t L = options_.seq_len;
  Batch b;
  b.inputs = Tensor::empty({batch_size, L}, DType::i64);
  b.targets = Tensor::empty({batch_size, L}, DType::i64);
  if (options_.reset_at_eot) b.seq_idx = Tensor::empty({batch_size, L}, DType::i32);
  b.continues.assign(size_t(batch_size), false);
  return b;
}

bool DataLoader::read_window(const TokenDataset& ds, size_t file, int64_t start, Batch& b, int64_t row) const {
  const int64_t L = options_.seq_len;
  // With documents the token before the window tells whether the window starts one.
  const int64_t before = options_.reset_at_eot && start > 0 ? 1 : 0;
  std::vector<int64_t> w(size_t(L + 1 + before));
  ds.read(file, start - before, L + 1 + before, w.data());
  const int64_t* win = w.data() + before;  // win[-1]: the token before, when read
  std::copy(win, win + L, b.inputs.data<int64_t>() + row * L);
  std::copy(win + 1, win + L + 1, b.targets.data<int64_t>() + row * L);
  if (!options_.reset_at_eot) return false;
  const TokenFileInfo& info = ds.files()[file];
  auto starts_document = [&](int64_t t) {  // input position t
    const int64_t pos = start + t;
    if (!info.doc_offsets.empty())
      return std::binary_search(info.doc_offsets.begin(), info.doc_offsets.end(), uint64_t(pos));
    return pos == 0 || win[t - 1] == info.eot_token;
  };
  int32_t* seq = b.seq_idx.data<int32_t>() + row * L;
  int32_t doc = 0;
  for (int64_t t = 0; t < L; ++t) {
    if (t > 0 && starts_document(t)) ++doc;
    seq[t] = doc;
  }
  return starts_document(0);
}

void DataLoader::check_documents_marked(const TokenDataset& ds) {
  for (const TokenFileInfo& f : ds.files())
    if (f.eot_token < 0 && f.doc_offsets.empty())
      fail("data: data.reset_at_eot needs to know where documents start, but '{}' has no end-of-text token (its "
           "eot_token attribute is -1) and no /doc_offsets; write it with an eot token (coil prepare, "
           "scripts/prepare_hf.py) or turn data.reset_at_eot off",
           f.path);
}

void DataLoader::window(uint64_t example, Batch& b, int64_t row) {
  const auto& o = options_;
  const int64_t L = o.seq_len;
  if (o.kind == "synthetic") {
    synthetic_example(o, o.seed, example, b.inputs.data<int64_t>() + row * L, b.targets.data<int64_t>() + row * L);
    return;
  }
  if (o.sampler != "sequential") {
    const uint64_t n = uint64_t(total_starts_);
    int64_t u = o.sampler == "shuffled" ? int64_t(permuted_index(example % n, n, o.seed, example / n))
                                        : int64_t(draw64(o.seed, example) % n);
    size_t f = size_t(std::upper_bound(starts_cum_.begin(), starts_cum_.end(), u) - starts_cum_.begin() - 1);
    read_window(*dataset_, f, (u - starts_cum_[f]) * stride_, b, row);
    return;
  }
  // Sequential: window k of the slot's run.
  const uint64_t slots = uint64_t(o.slots);
  const int64_t k = int64_t((example / slots) % uint64_t(run_));
  const int64_t i = int64_t(example % slots) * run_ + k;
  size_t f = size_t(std::upper_bound(windows_cum_.begin(), windows_cum_.end(), i) - windows_cum_.begin() - 1);
  const int64_t j = i - windows_cum_[f];
  const bool starts_document = read_window(*dataset_, f, j * L, b, row);
  b.continues[size_t(row)] = k > 0 && j > 0 && !starts_document;
}

Batch DataLoader::next_train(int64_t batch_size) {
  Batch b = empty_batch(batch_size);
  for (int64_t i = 0; i < batch_size; ++i) {
    uint64_t example = drawn_ * uint64_t(options_.world_size) + uint64_t(options_.rank);
    window(example, b, i);
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
  Batch b = empty_batch(batch_size);
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
    read_window(ds, f, s, b, i);
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
  std::string order = o.sampler == "sequential"
                          ? fmt::format("read in order: {} slots of {} consecutive windows", o.slots, run_)
                          : o.sampler == "shuffled" ? "shuffled, consecutive: one pass over the training tokens"
                                                    : "random windows";
  return fmt::format("{} token file(s) '{}': {} tokens ({} tokenizer), {} training windows ({}{}), {} validation "
                     "windows",
                     dataset_->files().size(), o.path, dataset_->total_tokens(), dataset_->files()[0].tokenizer,
                     total_starts_, order, o.reset_at_eot ? ", documents reset at their starts" : "",
                     val_windows_.size());
}

}  // namespace coil::data
