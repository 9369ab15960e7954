#include "data/tokenizer.h"

#include <fstream>
#include <iterator>

#include "data/hdf5_util.h"
#include "data/prepare.h"

namespace coil::data {

Tokenizer Tokenizer::byte_level() {
  Tokenizer t;
  t.name_ = "byte";
  t.vocab_size_ = kByteVocab;
  t.eot_token_ = kByteEot;
  return t;
}

Tokenizer Tokenizer::from_token_file(const std::string& path) {
  h5::Handle file = h5::open_file(path);
  const std::string name = h5::read_attr_str(file, "tokenizer", path);
  if (name == "byte") return byte_level();
  if (name.rfind("sentencepiece-", 0) != 0)
    fail("tokenizer: '{}' was written with the tokenizer '{}', which is not built into coil (byte-level and "
         "SentencePiece are)",
         path, name);
  Tokenizer t;
  t.name_ = name;
  t.sentencepiece_ = std::make_shared<const SentencePieceModel>(read_tokenizer_model(path));
  t.vocab_size_ = t.sentencepiece_->vocab_size();
  t.eot_token_ = h5::read_attr_i64(file, "eot_token", path);
  return t;
}

Tokenizer Tokenizer::from_sentencepiece_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  COIL_CHECK(in.good(), "tokenizer: cannot read the SentencePiece model '{}'", path);
  Tokenizer t;
  t.name_ = "sentencepiece (" + path + ")";
  t.sentencepiece_ = std::make_shared<const SentencePieceModel>(
      std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  t.vocab_size_ = t.sentencepiece_->vocab_size();
  t.eot_token_ = t.sentencepiece_->eot_token();
  return t;
}

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  if (sentencepiece_) return sentencepiece_->encode(text);
  return std::vector<int64_t>(reinterpret_cast<const unsigned char*>(text.data()),
                              reinterpret_cast<const unsigned char*>(text.data()) + text.size());
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  if (sentencepiece_) return sentencepiece_->decode(ids);
  std::string out;
  for (int64_t id : ids) {
    COIL_CHECK(id >= 0 && id < 256, "tokenizer: id {} is not a byte (byte-level ids 0..255; {} is the end of text)",
               id, kByteEot);
    out.push_back(char(id));
  }
  return out;
}

}  // namespace coil::data
