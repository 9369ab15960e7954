#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/sentencepiece_tokenizer.h"
#include "data/token_file.h"
#include "tests/catch.h"
#include "tests/files.h"

using namespace coil;
using namespace coil::data;
namespace fs = std::filesystem;

namespace {

// A small corpus with repeated words (so BPE finds merges), punctuation, digits, runs of
// spaces, tabs, blank lines and non-ASCII text.
std::string corpus(int seed, int lines) {
  const char* words[] = {"the",   "state",  "space", "model", "selects", "tokens", "along",  "time",
                         "scan",  "layer",  "mamba", "attention", "transformer", "learns", "copying",
                         "heads", "induction", "sequence", "length", "memory", "über", "naïve", "日本語"};
  const int nw = int(sizeof(words) / sizeof(words[0]));
  std::string out;
  uint32_t x = uint32_t(seed) * 2654435761u + 1;
  auto next = [&]() { return x = x * 1664525u + 1013904223u, x >> 8; };
  for (int l = 0; l < lines; ++l) {
    int n = 4 + int(next() % 10);
    for (int i = 0; i < n; ++i) {
      out += words[next() % nw];
      uint32_t r = next() % 20;
      out += r == 0 ? ",  " : r == 1 ? "\t" : r == 2 ? std::to_string(next() % 1000) + " " : " ";
    }
    out += (l % 7 == 6) ? ".\n\n" : ".\n";
  }
  return out;
}

std::vector<int64_t> read_tokens(const std::string& path, TokenFileInfo* info = nullptr) {
  TokenDataset ds(path, 0);
  if (info) *info = ds.files()[0];
  std::vector<int64_t> ids(size_t(ds.files()[0].num_tokens));
  ds.read(0, 0, int64_t(ids.size()), ids.data());
  return ids;
}

}  // namespace

TEST_CASE("sentencepiece: reports when it is not built in", "[tokenizer]") {
  if (sentencepiece_available()) {
    SUCCEED("built with SentencePiece");
    return;
  }
  WARN("coil was built without SentencePiece: its tests check only the error (apt-get install libsentencepiece-dev)");
  REQUIRE_THROWS_WITH(prepare_sentencepiece({"x.txt"}, "x.h5", {}),
                      Catch::Matchers::Contains("built without SentencePiece"));
}

TEST_CASE("sentencepiece: BPE trains on text files and encodes them losslessly into a token file", "[tokenizer]") {
  if (!sentencepiece_available()) return;  // counted by the test above
  fs::path dir = test::fresh_dir("coil_test_tokenizer", "bpe");
  std::string a = corpus(1, 300), b = corpus(2, 200) + "trailing line without newline   ";
  test::write_text(dir / "a.txt", a);
  test::write_text(dir / "b.txt", b);
  SentencePieceOptions o;
  o.vocab_size = 400;
  o.model_type = "bpe";
  o.threads = 2;
  auto stats = prepare_sentencepiece({(dir / "*.txt").string()}, (dir / "train.h5").string(), o);
  CHECK(stats.trained);
  CHECK(stats.model_path == (dir / "train.model").string());
  CHECK(fs::exists(dir / "train.model"));
  CHECK_FALSE(fs::exists(dir / "train.h5.partial"));
  CHECK(stats.vocab_size > 256);
  CHECK(stats.vocab_size <= 400);
  CHECK(stats.eot_token == 1);
  CHECK(stats.prepare.files == 2);
  CHECK(stats.prepare.documents == 2);
  CHECK(stats.tokenizer.rfind(fmt::format("sentencepiece-bpe-{}-", stats.vocab_size), 0) == 0);

  TokenFileInfo info;
  auto ids = read_tokens((dir / "train.h5").string(), &info);
  CHECK(info.vocab_size == stats.vocab_size);
  CHECK(info.tokenizer == stats.tokenizer);
  CHECK(info.eot_token == 1);
  CHECK_FALSE(info.u32);
  CHECK(int64_t(ids.size()) == stats.prepare.tokens);
  REQUIRE(info.doc_offsets.size() == 3);
  CHECK(ids[info.doc_offsets[1] - 1] == 1);  // each document ends with end-of-text
  CHECK(ids.back() == 1);
  // BPE compresses: fewer tokens than bytes.
  CHECK(ids.size() < (a.size() + b.size()) / 2);

  // The token file carries its model; decoding gives the text back exactly.
  std::string model = read_tokenizer_model((dir / "train.h5").string());
  CHECK(model == test::read_text(dir / "train.model"));
  CHECK(sentencepiece_decode(model, ids) == a + "\n<|endoftext|>\n" + b + "\n<|endoftext|>\n");
  std::string odd = "  two leading spaces,\ttab, ünïcødé ✓ and\r\nCRLF\n\n\nblank lines 12345 ";
  CHECK(sentencepiece_decode(model, sentencepiece_encode(model, odd)) == odd);
  {
    h5::Handle f = h5::open_file((dir / "train.h5").string());
    CHECK(h5::read_attr_str(f, "tokenizer_model_type", "train.h5") == "bpe");
    CHECK(fs::path(h5::read_attr_str(f, "tokenizer_model_path", "train.h5")).filename() == "train.model");
  }

  // Held-out text encoded with the same model carries the same tokenizer name (the data
  // loader requires training and validation files to match).
  test::write_text(dir / "val.txt", corpus(3, 40));
  SentencePieceOptions v;
  v.model = stats.model_path;
  auto vs = prepare_sentencepiece({(dir / "val.txt").string()}, (dir / "val.h5").string(), v);
  CHECK_FALSE(vs.trained);
  CHECK(vs.tokenizer == stats.tokenizer);
  TokenFileInfo vinfo;
  auto vids = read_tokens((dir / "val.h5").string(), &vinfo);
  CHECK(vinfo.tokenizer == info.tokenizer);
  CHECK(sentencepiece_decode(model, vids) == corpus(3, 40) + "\n<|endoftext|>\n");
}

TEST_CASE("sentencepiece: unigram, documents per line, and errors", "[tokenizer]") {
  if (!sentencepiece_available()) return;
  fs::path dir = test::fresh_dir("coil_test_tokenizer", "unigram");
  test::write_text(dir / "c.txt", corpus(5, 400));
  SentencePieceOptions o;
  o.vocab_size = 500;
  o.model_type = "unigram";
  o.threads = 2;
  o.documents.lines_are_documents = true;
  o.model_out = (dir / "tok" / "uni.model").string();
  auto s = prepare_sentencepiece({(dir / "c.txt").string()}, (dir / "c.h5").string(), o);
  CHECK(fs::exists(dir / "tok" / "uni.model"));
  CHECK(s.tokenizer.rfind("sentencepiece-unigram-", 0) == 0);
  CHECK(s.prepare.documents == 400);
  // A different model is a different tokenizer.
  test::write_text(dir / "d.txt", corpus(6, 300));
  SentencePieceOptions o2 = o;
  o2.model_out = (dir / "uni2.model").string();
  auto s2 = prepare_sentencepiece({(dir / "d.txt").string()}, (dir / "d.h5").string(), o2);
  CHECK(s2.tokenizer != s.tokenizer);
  // An existing unigram model is labelled as such even when no type is given.
  SentencePieceOptions reuse;
  reuse.model = o.model_out;
  CHECK(prepare_sentencepiece({(dir / "c.txt").string()}, (dir / "c3.h5").string(), reuse).tokenizer == s.tokenizer);

  SentencePieceOptions bad = o;
  bad.vocab_size = 100;
  REQUIRE_THROWS_WITH(prepare_sentencepiece({(dir / "c.txt").string()}, (dir / "x.h5").string(), bad),
                      Catch::Matchers::Contains("--vocab-size 100 is too small"));
  bad = o;
  bad.model_type = "wordpiece";
  REQUIRE_THROWS_WITH(prepare_sentencepiece({(dir / "c.txt").string()}, (dir / "x.h5").string(), bad),
                      Catch::Matchers::Contains("bpe or unigram"));
  REQUIRE_THROWS_WITH(prepare_sentencepiece({(dir / "nothing*.txt").string()}, (dir / "x.h5").string(), o),
                      Catch::Matchers::Contains("no file matches"));
  bad = o;
  bad.model = (dir / "missing.model").string();
  REQUIRE_THROWS_WITH(prepare_sentencepiece({(dir / "c.txt").string()}, (dir / "x.h5").string(), bad),
                      Catch::Matchers::Contains("cannot read the SentencePiece model"));
  CHECK_FALSE(fs::exists(dir / "x.h5"));
  REQUIRE_THROWS_WITH(read_tokenizer_model((dir / "c.h5").string() + ".nope"), Catch::Matchers::Contains("c.h5.nope"));
}
