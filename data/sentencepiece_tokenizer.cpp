#include "data/sentencepiece_tokenizer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include "core/atomic_file.h"
#include "data/hdf5_util.h"
#include "data/prepare.h"
#include "data/token_file.h"

#ifdef COIL_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <thread>
#include <unordered_map>
#endif

namespace coil::data {
namespace fs = std::filesystem;

#ifndef COIL_SENTENCEPIECE

namespace {
[[noreturn]] void unavailable(const char* what) {
  fail("{}: coil was built without SentencePiece (install libsentencepiece-dev and rebuild; or tokenize with "
       "scripts/prepare_hf.py)",
       what);
}
}  // namespace

bool sentencepiece_available() { return false; }
std::string train_sentencepiece(const std::vector<std::string>&, const std::string&, const SentencePieceOptions&) {
  unavailable("train_sentencepiece");
}
SentencePieceStats prepare_sentencepiece(const std::vector<std::string>&, const std::string&,
                                         const SentencePieceOptions&) {
  unavailable("prepare --tokenizer sentencepiece");
}
struct SentencePieceModel::Impl {};
SentencePieceModel::SentencePieceModel(const std::string&) { unavailable("SentencePieceModel"); }
SentencePieceModel::~SentencePieceModel() = default;
int64_t SentencePieceModel::vocab_size() const { unavailable("SentencePieceModel"); }
int64_t SentencePieceModel::eot_token() const { unavailable("SentencePieceModel"); }
std::vector<int64_t> SentencePieceModel::encode(const std::string&) const { unavailable("SentencePieceModel"); }
std::string SentencePieceModel::decode(const std::vector<int64_t>&) const { unavailable("SentencePieceModel"); }

#else

namespace {

uint64_t fnv1a64(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// The model type recorded in a serialized ModelProto (trainer_spec = field 2, its model_type =
// field 3: 1 unigram, 2 bpe, 3 word, 4 char), read from the protobuf wire format directly so
// that no protobuf headers are needed.
std::string model_type_of(const std::string& proto) {
  auto varint = [](const std::string& s, size_t& i, uint64_t& v) {
    v = 0;
    for (int shift = 0; i < s.size() && shift < 64; shift += 7) {
      uint8_t b = uint8_t(s[i++]);
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  };
  // Finds field `want` in [begin, end): a varint value, or a length-delimited range.
  auto find = [&](size_t begin, size_t end, uint64_t want, uint64_t& value, size_t& sub_begin, size_t& sub_end) {
    size_t i = begin;
    while (i < end) {
      uint64_t key = 0, v = 0;
      if (!varint(proto, i, key)) return false;
      uint64_t field = key >> 3, wire = key & 7;
      if (wire == 0) {
        if (!varint(proto, i, v)) return false;
        if (field == want) return value = v, true;
      } else if (wire == 2) {
        if (!varint(proto, i, v) || i + v > end) return false;
        if (field == want) return sub_begin = i, sub_end = size_t(i + v), true;
        i += size_t(v);
      } else if (wire == 1) {
        i += 8;
      } else if (wire == 5) {
        i += 4;
      } else {
        return false;
      }
    }
    return false;
  };
  uint64_t v = 0, type = 1;  // unigram is the proto's default
  size_t b = 0, e = 0;
  if (!find(0, proto.size(), 2, v, b, e)) return "unknown";
  size_t b2 = 0, e2 = 0;
  find(b, e, 3, type, b2, e2);
  switch (type) {
    case 1: return "unigram";
    case 2: return "bpe";
    case 3: return "word";
    case 4: return "char";
    default: return "unknown";
  }
}

// The training sentences: every non-empty line of every input, read one file at a time.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(std::vector<std::string> files) : files_(std::move(files)) { Next(); }
  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override { return status_; }
  void Next() override {
    while (true) {
      if (in_.is_open() && std::getline(in_, line_)) {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        if (line_.empty()) continue;
        lines_ += 1;
        return;
      }
      if (in_.is_open()) in_.close();
      if (next_ >= files_.size()) {
        done_ = true;
        return;
      }
      const std::string& f = files_[next_++];
      in_.clear();
      in_.open(f, std::ios::binary);
      if (!in_) {
        status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound, "cannot read " + f);
        done_ = true;
        return;
      }
    }
  }
  int64_t lines() const { return lines_; }

 private:
  std::vector<std::string> files_;
  size_t next_ = 0;
  std::ifstream in_;
  std::string line_;
  bool done_ = false;
  int64_t lines_ = 0;
  sentencepiece::util::Status status_;
};

void load_processor(sentencepiece::SentencePieceProcessor& sp, const std::string& serialized, const std::string& what) {
  auto st = sp.LoadFromSerializedProto(serialized);
  if (!st.ok()) fail("sentencepiece: cannot load the model {}: {}", what, st.ToString());
}

// Encodes one document line by line, each newline kept (as its byte piece), so that the
// concatenated pieces decode to the document exactly.
void encode_document(const sentencepiece::SentencePieceProcessor& sp, const std::string& text,
                     std::vector<uint32_t>& out) {
  std::vector<int> ids;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    end = end == std::string::npos ? text.size() : end + 1;
    auto st = sp.Encode(std::string_view(text).substr(begin, end - begin), &ids);
    if (!st.ok()) fail("sentencepiece: cannot encode: {}", st.ToString());
    for (int id : ids) out.push_back(uint32_t(id));
    begin = end;
  }
}

}  // namespace

bool sentencepiece_available() { return true; }

std::string train_sentencepiece(const std::vector<std::string>& inputs, const std::string& model_path,
                                const SentencePieceOptions& o) {
  std::vector<std::string> files = expand_inputs(inputs);
  for (auto& f : files)
    if (f == "-") fail("prepare: a SentencePiece model is trained from files, not standard input; give files, or "
                       "an existing model (--sp-model)");
  COIL_CHECK(o.model_type == "bpe" || o.model_type == "unigram",
             "prepare: tokenizer model type must be bpe or unigram, got '{}'", o.model_type);
  COIL_CHECK(o.vocab_size >= 8 && o.vocab_size <= (int64_t(1) << 31),
             "prepare: --vocab-size {} is out of range [8, 2^31]", o.vocab_size);
  int64_t min_vocab = o.byte_fallback ? 256 + 2 + 1 : 3;
  COIL_CHECK(o.vocab_size >= min_vocab,
             "prepare: --vocab-size {} is too small: byte fallback needs the 256 byte pieces, <unk> and the "
             "end-of-text piece plus at least one more ({} at least)",
             o.vocab_size, min_vocab);
  int64_t threads = o.threads > 0 ? o.threads : std::max<int64_t>(1, std::thread::hardware_concurrency());
  std::unordered_map<std::string, std::string> kw = {
      {"model_type", o.model_type},
      {"vocab_size", std::to_string(o.vocab_size)},
      {"character_coverage", fmt::format("{}", o.character_coverage)},
      {"input_sentence_size", std::to_string(o.input_sentence_size)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", std::to_string(o.max_sentence_length)},
      {"byte_fallback", o.byte_fallback ? "true" : "false"},
      {"num_threads", std::to_string(threads)},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"allow_whitespace_only_pieces", "true"},
      {"split_digits", "true"},
      {"hard_vocab_limit", "false"},  // a small corpus gives fewer pieces rather than an error
      {"unk_id", "0"},
      {"eos_id", "1"},
      {"bos_id", "-1"},
      {"pad_id", "-1"},
      {"eos_piece", "<|endoftext|>"},
      {"minloglevel", o.verbose ? "0" : "2"},
  };
  sentencepiece::SetRandomGeneratorSeed(unsigned(o.seed));
  LineIterator it(files);
  std::string model;
  auto st = sentencepiece::SentencePieceTrainer::Train(kw, &it, &model);
  if (!st.ok()) fail("prepare: SentencePiece training on {} failed: {}", inputs.front(), st.ToString());
  if (it.lines() == 0) fail("prepare: the inputs hold no text to train a tokenizer on");
  if (!model_path.empty()) {
    fs::path p(model_path);
    if (p.has_parent_path()) fs::create_directories(p.parent_path());
    replace_file(model_path, model);
  }
  return model;
}

SentencePieceStats prepare_sentencepiece(const std::vector<std::string>& inputs, const std::string& output,
                                         const SentencePieceOptions& o) {
  std::vector<std::string> files = expand_inputs(inputs);
  SentencePieceStats stats;
  std::string model;
  if (!o.model.empty()) {
    std::ifstream in(o.model, std::ios::binary);
    if (!in) fail("prepare: cannot read the SentencePiece model '{}'", o.model);
    model.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    stats.model_path = o.model;
  } else {
    std::string path = o.model_out;
    if (path.empty()) {
      fs::path p(output);
      path = (p.extension() == ".h5" || p.extension() == ".hdf5" ? p.replace_extension(".model")
                                                                   : fs::path(output + ".model"))
                 .string();
    }
    model = train_sentencepiece(inputs, path, o);
    stats.model_path = path;
    stats.trained = true;
  }
  sentencepiece::SentencePieceProcessor sp;
  load_processor(sp, model, "'" + stats.model_path + "'");
  stats.vocab_size = sp.GetPieceSize();
  stats.eot_token = sp.eos_id();
  COIL_CHECK(stats.eot_token >= 0, "prepare: the SentencePiece model '{}' has no end-of-sentence piece, which coil uses "
             "as the end-of-text token", stats.model_path);
  const std::string type = model_type_of(model);
  stats.tokenizer = fmt::format("sentencepiece-{}-{}-{:016x}", type, stats.vocab_size, fnv1a64(model));

  // Write to "<output>.partial" (itself written atomically by TokenWriter), add the model, rename.
  const std::string partial = output + ".partial";
  try {
    {
      TokenWriter w(partial, stats.vocab_size, stats.tokenizer, stats.eot_token);
      std::vector<uint32_t> ids;
      for (const auto& f : files) {
        std::string text = read_input(f);
        for_each_document(text, o.documents, [&](const std::string& doc) {
          ids.clear();
          encode_document(sp, doc, ids);
          w.append(ids);
          w.end_document();
          stats.prepare.documents += 1;
          stats.prepare.tokens += int64_t(ids.size()) + 1;
        });
        stats.prepare.files += 1;
      }
      if (stats.prepare.tokens == 0) fail("prepare: the inputs hold no text");
      w.close();
    }
    {
      h5::Handle file = h5::open_file(partial, true);
      const std::vector<hsize_t> dims = {hsize_t(model.size())};
      h5::write_dataset(file, "tokenizer_model", H5T_NATIVE_UINT8, dims, model.data(), partial);
      std::error_code ec;
      fs::path abs = fs::absolute(stats.model_path, ec);
      h5::write_attr_str(file, "tokenizer_model_path", ec ? stats.model_path : abs.lexically_normal().string());
      h5::write_attr_str(file, "tokenizer_model_type", type);
      H5Fflush(file, H5F_SCOPE_GLOBAL);
    }
    fs::rename(partial, output);
  } catch (...) {
    std::error_code ec;
    fs::remove(partial, ec);
    throw;
  }
  return stats;
}

struct SentencePieceModel::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SentencePieceModel::SentencePieceModel(const std::string& serialized_model) : impl_(std::make_unique<Impl>()) {
  load_processor(impl_->sp, serialized_model, "given");
}

SentencePieceModel::~SentencePieceModel() = default;

int64_t SentencePieceModel::vocab_size() const { return impl_->sp.GetPieceSize(); }
int64_t SentencePieceModel::eot_token() const { return impl_->sp.eos_id(); }

std::vector<int64_t> SentencePieceModel::encode(const std::string& text) const {
  std::vector<uint32_t> ids;
  encode_document(impl_->sp, text, ids);
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string SentencePieceModel::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> v;
  for (int64_t id : ids) {
    COIL_CHECK(id >= 0 && id < vocab_size(), "sentencepiece: id {} is outside the vocabulary of {}", id, vocab_size());
    v.push_back(int(id));
  }
  std::string out;
  auto st = impl_->sp.Decode(v, &out);
  if (!st.ok()) fail("sentencepiece: cannot decode: {}", st.ToString());
  return out;
}

#endif

std::vector<int64_t> sentencepiece_encode(const std::string& serialized_model, const std::string& text) {
  return SentencePieceModel(serialized_model).encode(text);
}

std::string sentencepiece_decode(const std::string& serialized_model, const std::vector<int64_t>& ids) {
  SentencePieceModel model(serialized_model);
  std::string out;
  std::vector<int64_t> piece;
  for (int64_t id : ids) {
    if (id != model.eot_token()) {
      piece.push_back(id);
      continue;
    }
    out += model.decode(piece) + "\n<|endoftext|>\n";
    piece.clear();
  }
  return out + model.decode(piece);
}

std::string read_tokenizer_model(const std::string& token_file) {
  h5::Handle file = h5::open_file(token_file);
  if (!h5::exists(file, "tokenizer_model"))
    fail("data: '{}' carries no /tokenizer_model (its tokenizer is '{}')", token_file,
         h5::has_attr(file, "tokenizer") ? h5::read_attr_str(file, "tokenizer", token_file) : "unknown");
  h5::Handle ds = h5::open_dataset(file, "tokenizer_model", token_file);
  auto dims = h5::dataset_dims(ds);
  COIL_CHECK(dims.size() == 1, "data: '{}': /tokenizer_model must be 1-D", token_file);
  std::string bytes(size_t(dims[0]), '\0');
  if (!bytes.empty())
    COIL_CHECK(H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()) >= 0,
               "data: cannot read /tokenizer_model of '{}'", token_file);
  return bytes;
}

}  // namespace coil::data
