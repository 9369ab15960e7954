#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "data/loader.h"
#include "data/prepare.h"
#include "data/token_file.h"
#include "tests/catch.h"

using namespace coil;
using namespace coil::data;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
fs::path test_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("coil_test_data_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}
// A token file holding ids 0, 1, 2, ... (mod vocab) with documents of `doc` tokens.
void write_counting(const std::string& path, int64_t n, int64_t vocab, int64_t doc = 100) {
  TokenWriter w(path, vocab, "test", -1, 1000);
  std::vector<uint32_t> ids;
  for (int64_t i = 0; i < n; ++i) {
    ids.push_back(uint32_t(i % vocab));
    if (ids.size() == size_t(doc)) {
      w.append(ids);
      w.end_document();
      ids.clear();
    }
  }
  w.append(ids);
  w.close();
}
std::vector<int64_t> values(const Tensor& t) { return t.to_vector<int64_t>(); }
// Two counting files, a (4000 tokens) and b (2000), the last 10% of each held out: training
// windows of 32 tokens from 0..3599 of a and 0..1799 of b.
DataOptions two_counting_files(const fs::path& dir, uint64_t seed) {
  write_counting((dir / "a.h5").string(), 4000, 60000);
  write_counting((dir / "b.h5").string(), 2000, 60000);
  DataOptions o;
  o.kind = "tokens";
  o.path = (dir / "*.h5").string();
  o.vocab_size = 60000;
  o.seq_len = 32;
  o.val_fraction = 0.1;
  o.seed = seed;
  return o;
}
// Ranks take disjoint example numbers: rank 1 of 2 draws first what one rank draws second.
bool rank1_draws_the_second_example(const DataOptions& o) {
  DataOptions r1 = o;
  r1.world_size = 2;
  r1.rank = 1;
  DataLoader single(o), rank1(r1);
  single.next_train(1);
  return values(rank1.next_train(1).inputs) == values(single.next_train(1).inputs);
}
}  // namespace

TEST_CASE("token files: write, read back, attributes, documents, uint16 and uint32", "[data]") {
  auto dir = test_dir("rw");
  std::string small = (dir / "a.h5").string(), big = (dir / "b.h5").string();
  write_counting(small, 5000, 1000, 128);
  {
    TokenWriter w(big, 100000, "test", 99999);
    w.append({70000, 1, 99998});
    w.end_document();
    w.append({5});
    w.close();
  }
  REQUIRE(!fs::exists(small + ".tmp"));
  TokenDataset ds((dir / "*.h5").string(), 100000);
  REQUIRE(ds.files().size() == 2);
  REQUIRE(ds.files()[0].path == small);
  REQUIRE(!ds.files()[0].u32);
  REQUIRE(ds.files()[1].u32);
  REQUIRE(ds.files()[0].num_tokens == 5000);
  REQUIRE(ds.files()[0].doc_offsets.size() == 5000 / 128 + 2);
  REQUIRE(ds.files()[0].doc_offsets.back() == 5000);
  REQUIRE(ds.total_tokens() == 5005);
  REQUIRE(ds.files()[1].vocab_size == 100000);
  REQUIRE(ds.files()[1].eot_token == 99999);
  std::vector<int64_t> got(5);
  ds.read(1, 0, 5, got.data());
  REQUIRE(got == std::vector<int64_t>{70000, 1, 99998, 99999, 5});
  REQUIRE(ds.files()[1].doc_offsets == std::vector<uint64_t>{0, 4, 5});
  ds.read(0, 1998, 3, got.data());
  REQUIRE(got[0] == 998);
  REQUIRE(got[2] == 0);
  REQUIRE_THROWS_WITH(ds.read(0, 4999, 2, got.data()), Contains("past the end"));
}

TEST_CASE("token files: clear errors for bad globs, files and out-of-vocabulary ids", "[data]") {
  auto dir = test_dir("err");
  REQUIRE_THROWS_WITH(TokenDataset((dir / "none*.h5").string(), 100), Contains("no file matches"));
  std::string path = (dir / "t.h5").string();
  write_counting(path, 3000, 500);
  // The file's vocabulary is larger than the model's.
  REQUIRE_THROWS_WITH(TokenDataset(path, 256), Contains("vocab_size 500"));
  // A file that claims a small vocabulary but holds a bad id: found with its position.
  {
    TokenWriter w(path, 300, "test", -1);
    std::vector<uint32_t> ids(3000, 7);
    w.append(ids);
    w.close();
    h5::Handle f = h5::open_file(path, true);
    h5::Handle d = h5::open_dataset(f, "tokens", path);
    h5::Handle space(H5Dget_space(d), H5Sclose);
    hsize_t start[1] = {1234}, count[1] = {1};
    H5Sselect_hyperslab(space, H5S_SELECT_SET, start, nullptr, count, nullptr);
    h5::Handle mem(H5Screate_simple(1, count, nullptr), H5Sclose);
    uint32_t bad = 290;
    H5Dwrite(d, H5T_NATIVE_UINT32, mem, space, H5P_DEFAULT, &bad);
  }
  {
    TokenDataset ds(path, 300);
    std::vector<int64_t> buf(100);
    REQUIRE_NOTHROW(ds.read(0, 0, 100, buf.data()));
    REQUIRE_NOTHROW(ds.check_all_ids());
  }
  DataOptions o;
  o.kind = "tokens";
  o.path = path;
  o.vocab_size = 290;
  o.seq_len = 16;
  // vocab_size attribute 300 > 290 is refused at once.
  REQUIRE_THROWS_WITH(DataLoader(o), Contains("vocab_size 300"));
  // With the file's attribute rewritten to fit, the bad id itself is caught, with its position.
  {
    h5::Handle f = h5::open_file(path, true);
    h5::write_attr_i64(f, "vocab_size", 290);
  }
  REQUIRE_THROWS_WITH(DataLoader(o), Contains("token id 290 at position 1234") && Contains("t.h5"));
  std::string notok = (dir / "x.h5").string();
  { h5::Handle f = h5::create_file(notok); }
  REQUIRE_THROWS_WITH(TokenDataset(notok, 100), Contains("has no /tokens dataset"));
  std::string text = (dir / "plain.h5").string();
  std::ofstream(text) << "not hdf5";
  REQUIRE_THROWS_WITH(TokenDataset(text, 100), Contains("not an HDF5 file"));
  REQUIRE_THROWS_WITH(TokenWriter(path, 100, "t", 0).append({100}), Contains("outside the vocabulary"));
}

namespace {
// Overwrites the first occurrence of the 8-byte little-endian `from` that `next` follows in the
// file (a dataspace's size and maximum size) with `to`: a damaged HDF5 header.
void patch_dims(const std::string& path, uint64_t from, const std::string& next, uint64_t to) {
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  std::string a(reinterpret_cast<const char*>(&from), 8), b(reinterpret_cast<const char*>(&to), 8);
  size_t pos = bytes.find(a + next);
  REQUIRE(pos != std::string::npos);
  bytes.replace(pos, 8, b);
  std::ofstream(path, std::ios::binary) << bytes;
}
}  // namespace

TEST_CASE("token files: damaged headers and bad attributes are errors naming the file", "[data]") {
  auto dir = test_dir("damaged");
  const std::string path = (dir / "t.h5").string();
  // /tokens claims far more tokens than the file stores (read as zeros, or bad_alloc, before).
  for (uint64_t claimed : {uint64_t(1) << 40, uint64_t(1) << 61}) {
    write_counting(path, 3000, 500);
    patch_dims(path, 3000, std::string(8, '\xff'), claimed);
    REQUIRE_THROWS_WITH(TokenDataset(path, 500),
                        Contains("'" + path + "' is damaged: /tokens claims " + std::to_string(claimed) + " tokens"));
  }
  // /doc_offsets with an absurd length (a vector length error before).
  write_counting(path, 3000, 500);  // 30 documents: 31 offsets
  uint64_t offsets = 31;
  patch_dims(path, 31, std::string(reinterpret_cast<const char*>(&offsets), 8), uint64_t(1) << 61);
  REQUIRE_THROWS_WITH(TokenDataset(path, 500), Contains("'" + path + "' is damaged: /doc_offsets has"));
  // Attributes out of range.
  write_counting(path, 3000, 500);
  {
    h5::Handle f = h5::open_file(path, true);
    h5::write_attr_i64(f, "vocab_size", -5);
  }
  REQUIRE_THROWS_WITH(TokenDataset(path, 0), Contains("'" + path + "': its vocab_size attribute is -5"));
  {
    h5::Handle f = h5::open_file(path, true);
    h5::write_attr_i64(f, "vocab_size", 500);
    h5::write_attr_i64(f, "eot_token", 500);
  }
  REQUIRE_THROWS_WITH(TokenDataset(path, 0), Contains("its eot_token attribute is 500"));
}

TEST_CASE("the window sampler is seeded, resumable, split by rank, and holds out validation data", "[data]") {
  auto dir = test_dir("sampler");
  DataOptions o = two_counting_files(dir, 11);
  DataLoader a(o), b(o);
  std::vector<std::vector<int64_t>> first;
  for (int i = 0; i < 5; ++i) first.push_back(values(a.next_train(4).inputs));
  for (int i = 0; i < 5; ++i) REQUIRE(values(b.next_train(4).inputs) == first[size_t(i)]);
  // Windows are contiguous runs of the counting sequence; targets are inputs shifted by one.
  Batch w = a.next_train(2);
  auto in = values(w.inputs), tg = values(w.targets);
  for (int64_t t = 0; t < 32; ++t) REQUIRE(tg[size_t(t)] == in[size_t(t)] + 1);
  // Resume: a loader restored to a's state continues exactly as a.
  SamplerState s = a.state();
  REQUIRE(s.examples_drawn == 22);
  DataLoader c(o);
  c.set_state(s);
  REQUIRE(values(c.next_train(3).inputs) == values(a.next_train(3).inputs));
  // Another seed differs; a wrong seed on restore is refused.
  DataOptions o2 = o;
  o2.seed = 12;
  DataLoader d(o2);
  REQUIRE(values(d.next_train(4).inputs) != first[0]);
  REQUIRE_THROWS_WITH(d.set_state(s), Contains("seeded with 11"));
  // Training windows never touch the held-out tail (the last 10% of each file).
  DataLoader e(o);
  for (int i = 0; i < 200; ++i) {
    Batch x = e.next_train(8);
    auto v = values(x.targets);
    for (int64_t r = 0; r < 8; ++r) {
      int64_t last = v[size_t(r * 32 + 31)];
      REQUIRE(last < 3600);  // both files count from 0; a's tail starts at 3600, b's at 1800
    }
  }
  // Validation: fixed batches from the tails, the same at every call.
  REQUIRE(e.num_val_batches(2) == (12 + 6) / 2);
  REQUIRE(values(e.val_batch(1, 2).inputs) == values(a.val_batch(1, 2).inputs));
  REQUIRE(values(e.val_batch(0, 2).inputs)[0] == 3600);
  REQUIRE(rank1_draws_the_second_example(o));
  // Separate validation files.
  write_counting((dir / "val.h5x").string(), 330, 60000);
  DataOptions ov = o;
  ov.val_path = (dir / "val.h5x").string();
  DataLoader v(ov);
  REQUIRE(v.num_val_batches(1) == 10);
  REQUIRE(values(v.val_batch(0, 1).inputs)[0] == 0);
}

TEST_CASE("the shuffled sampler visits every consecutive window once a pass, in a seeded order", "[data]") {
  auto dir = test_dir("shuffled");
  DataOptions o = two_counting_files(dir, 5);
  o.sampler = "shuffled";
  DataLoader a(o);
  // Window k holds tokens 32k .. 32k+32: floor(3599 / 32) = 112 windows in a, floor(1799 / 32) = 56 in b.
  REQUIRE(a.train_windows() == 168);
  auto pass_starts = [&](DataLoader& loader) {
    std::vector<int64_t> starts;
    for (int i = 0; i < 21; ++i) {
      Batch x = loader.next_train(8);
      auto in = values(x.inputs), tg = values(x.targets);
      for (int64_t r = 0; r < 8; ++r) {
        starts.push_back(in[size_t(r * 32)]);
        for (int64_t t = 0; t < 32; ++t) REQUIRE(tg[size_t(r * 32 + t)] == in[size_t(r * 32)] + t + 1);
      }
    }
    return starts;
  };
  std::map<int64_t, int> expected;  // a start of both files (0 .. 1760) twice, of a alone once
  for (int64_t k = 0; k < 112; ++k) expected[32 * k] += 1;
  for (int64_t k = 0; k < 56; ++k) expected[32 * k] += 1;
  std::vector<int64_t> first = pass_starts(a), second = pass_starts(a);
  for (auto* pass : {&first, &second}) {
    std::map<int64_t, int> seen;
    for (int64_t s : *pass) seen[s] += 1;
    REQUIRE(seen == expected);
  }
  REQUIRE(first != second);  // each pass has its own order
  std::vector<int64_t> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  REQUIRE(first != sorted);  // and the order is not the files' order
  // Seeded and resumable: the same seed repeats it, a restored state continues it.
  DataLoader b(o);
  REQUIRE(pass_starts(b) == first);
  DataLoader c(o), d(o);
  for (int i = 0; i < 7; ++i) c.next_train(8);
  d.set_state(c.state());
  REQUIRE(values(d.next_train(8).inputs) == values(c.next_train(8).inputs));
  DataOptions other = o;
  other.seed = 6;
  DataLoader e(other);
  REQUIRE(pass_starts(e) != first);
  REQUIRE(rank1_draws_the_second_example(o));
  // One window a pass (n = 1) and an unknown mode.
  write_counting((dir / "one.h5x").string(), 40, 60000);
  DataOptions tiny = o;
  tiny.path = (dir / "one.h5x").string();
  tiny.val_fraction = 0;
  DataLoader t(tiny);
  REQUIRE(t.train_windows() == 1);
  REQUIRE(values(t.next_train(3).inputs)[64] == 0);
  DataOptions bad = o;
  bad.sampler = "sorted";
  REQUIRE_THROWS_WITH(DataLoader(bad), Contains("unknown sampler 'sorted'"));
}

TEST_CASE("synthetic tasks are well formed and reproducible", "[data]") {
  DataOptions o;
  o.seq_len = 64;
  o.vocab_size = 32;
  o.seed = 5;
  SECTION("selective copying: data among noise, then one marker per answer") {
    o.task = "selective_copying";  // task_vocab 16: noise 0, data 1..16, marker 17
    DataLoader l(o);
    REQUIRE(l.has_accuracy());
    Batch b = l.next_train(64);
    REQUIRE(b.target_count() == 64 * 16);
    auto in = values(b.inputs), tg = values(b.targets);
    std::set<int64_t> first_positions, last_positions, tokens;
    for (int64_t r = 0; r < 64; ++r) {
      const int64_t* x = in.data() + r * 64;
      const int64_t* y = tg.data() + r * 64;
      std::vector<int64_t> data_tokens, positions;
      for (int64_t t = 0; t < 48; ++t) {
        REQUIRE(x[t] >= 0);
        REQUIRE(x[t] <= 16);  // noise or data: no marker among them
        if (x[t] != 0) data_tokens.push_back(x[t]), positions.push_back(t);
        REQUIRE(y[t] == kIgnoreIndex);
      }
      REQUIRE(data_tokens.size() == 16);
      first_positions.insert(positions.front());
      last_positions.insert(positions.back());
      for (int64_t i = 0; i < 16; ++i) {
        REQUIRE(x[48 + i] == 17);                   // a marker at every answer position
        REQUIRE(y[48 + i] == data_tokens[size_t(i)]);  // the data tokens in order
        tokens.insert(y[48 + i]);
      }
    }
    // The data tokens use the whole range 1..16 and their positions vary from example to example.
    REQUIRE(tokens.size() == 16);
    REQUIRE(*tokens.begin() == 1);
    REQUIRE(*tokens.rbegin() == 16);
    REQUIRE(first_positions.size() > 4);
    REQUIRE(last_positions.size() > 4);
    // Another batch differs; the validation batches are fixed and differ from training.
    REQUIRE(values(l.next_train(16).inputs) != in);
    REQUIRE(values(l.val_batch(0, 4).inputs) == values(l.val_batch(0, 4).inputs));
    DataLoader m(o);
    REQUIRE(values(m.next_train(64).inputs) == in);
  }
  SECTION("induction heads: trigger, key, ..., trigger -> key") {
    o.task = "induction_heads";  // task_vocab 16: data 0..15, trigger 16
    o.seq_len = 8;               // short, so that every trigger position is drawn
    DataLoader l(o);
    REQUIRE(l.has_accuracy());
    Batch b = l.next_train(256);
    REQUIRE(b.target_count() == 256);
    auto in = values(b.inputs), tg = values(b.targets);
    std::set<int64_t> trigger_positions, keys, tokens;
    for (int64_t r = 0; r < 256; ++r) {
      const int64_t* x = in.data() + r * 8;
      const int64_t* y = tg.data() + r * 8;
      REQUIRE(x[7] == 16);  // the trigger, repeated at the end
      int64_t p = -1, count = 0;
      for (int64_t t = 0; t < 7; ++t) {
        if (x[t] == 16) p = t, ++count;
        else tokens.insert(x[t]);
        REQUIRE(y[t] == kIgnoreIndex);
      }
      REQUIRE(count == 1);  // the trigger appears once before the end
      REQUIRE(p <= 4);      // in [0, seq_len - 4]: the key never sits right before the last trigger
      REQUIRE(y[7] == x[p + 1]);
      trigger_positions.insert(p);
      keys.insert(y[7]);
    }
    REQUIRE(trigger_positions == std::set<int64_t>{0, 1, 2, 3, 4});
    REQUIRE(keys.size() == 16);
    REQUIRE(tokens.size() == 16);
    REQUIRE(*tokens.rbegin() == 15);
  }
  SECTION("random tokens") {
    o.task = "random";
    DataLoader l(o);
    REQUIRE(!l.has_accuracy());
    Batch b = l.next_train(4);
    REQUIRE(b.target_count() == 4 * 64);
    std::set<int64_t> seen;
    for (auto v : values(b.inputs)) seen.insert(v);
    REQUIRE(*seen.rbegin() < 32);
    REQUIRE(seen.size() > 20);
  }
  SECTION("tasks that do not fit are refused") {
    o.task = "selective_copying";
    o.task_vocab = 31;
    REQUIRE_THROWS_WITH(DataLoader(o), Contains("uses 33 token ids"));
    o.task_vocab = 8;
    o.copy_tokens = 40;
    REQUIRE_THROWS_WITH(DataLoader(o), Contains("at least 2 * copy_tokens"));
  }
}

TEST_CASE("byte-level prepare writes a token file the loader reads", "[data]") {
  auto dir = test_dir("prepare");
  std::ofstream(dir / "a.txt") << "hello world\n";
  std::ofstream(dir / "b.txt") << "line one\nline two\n";
  std::string out = (dir / "bytes.h5").string();
  PrepareStats s = prepare_bytes({(dir / "*.txt").string()}, out);
  REQUIRE(s.files == 2);
  REQUIRE(s.documents == 2);
  REQUIRE(s.tokens == 12 + 1 + 18 + 1);
  TokenDataset ds(out, 257);
  REQUIRE(ds.files()[0].tokenizer == "byte");
  REQUIRE(ds.files()[0].eot_token == 256);
  REQUIRE(ds.files()[0].vocab_size == 257);
  REQUIRE(ds.files()[0].doc_offsets == std::vector<uint64_t>{0, 13, 32});
  std::vector<int64_t> ids(size_t(s.tokens));
  ds.read(0, 0, s.tokens, ids.data());
  REQUIRE(decode_bytes(ids) == "hello world\n\n<|eot|>\nline one\nline two\n\n<|eot|>\n");
  PrepareOptions lines;
  lines.lines_are_documents = true;
  REQUIRE(prepare_bytes({(dir / "b.txt").string()}, out, lines).documents == 2);
  REQUIRE_THROWS_WITH(prepare_bytes({(dir / "*.md").string()}, out), Contains("no file matches"));
  // A folder among the inputs, an output folder that does not exist: said so, nothing written.
  fs::create_directories(dir / "sub");
  REQUIRE_THROWS_WITH(prepare_bytes({(dir / "sub").string()}, (dir / "x.h5").string()),
                      Contains("'" + (dir / "sub").string() + "' is a folder"));
  REQUIRE(!fs::exists(dir / "x.h5.tmp"));
  REQUIRE_THROWS_WITH(prepare_bytes({(dir / "a.txt").string()}, (dir / "none" / "x.h5").string()),
                      Contains("the folder '" + (dir / "none").string() + "' does not exist"));
}
