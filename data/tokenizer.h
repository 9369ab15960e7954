// The tokenizer a run was trained with, for generation (`coil generate`): encoding prompts and
// decoding new tokens. A token file records it (data/token_file.h): the attribute `tokenizer`
// names it and `eot_token` is its end of text;
//   "byte"             ids 0..255 are the bytes, 256 the end of text (data/prepare.h)
//   "sentencepiece-*"  the SentencePiece model the file carries in /tokenizer_model
//                      (data/sentencepiece_tokenizer.h)
// Any other name (a Hugging Face tokenizer written by scripts/prepare_hf.py, say) is not built
// into coil: an error that names it.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/sentencepiece_tokenizer.h"

namespace coil::data {

class Tokenizer {
 public:
  static Tokenizer byte_level();
  static Tokenizer from_token_file(const std::string& path);
  static Tokenizer from_sentencepiece_file(const std::string& path);  // a .model file

  const std::string& name() const { return name_; }
  int64_t vocab_size() const { return vocab_size_; }
  int64_t eot_token() const { return eot_token_; }
  std::vector<int64_t> encode(const std::string& text) const;
  // The text of ids, none of them the end of text (byte level: the raw bytes, which may end
  // inside a UTF-8 character).
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  std::string name_;
  int64_t vocab_size_ = 0, eot_token_ = -1;
  std::shared_ptr<const SentencePieceModel> sentencepiece_;  // null: byte level
};

}  // namespace coil::data
