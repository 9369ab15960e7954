// SentencePiece tokenization for `coil prepare --tokenizer sentencepiece --vocab-size N`
// (optional at build time: libsentencepiece-dev; without it every function here except
// sentencepiece_available() raises "built without SentencePiece").
//
//   // train a BPE model of 8000 pieces on the text, then encode the text with it
//   SentencePieceOptions o; o.vocab_size = 8000;
//   PrepareStats s = prepare_sentencepiece({"corpus/*.txt"}, "data/train.h5", o);
//   // -> data/train.h5 and data/train.model; encode held-out text with the same model:
//   o.model = "data/train.model";
//   prepare_sentencepiece({"heldout.txt"}, "data/val.h5", o);
//
// The model is lossless on any text: identity normalization (no NFKC, whitespace kept as is),
// byte fallback (bytes no piece covers, newlines included, become <0xNN> pieces), no dummy
// prefix; text is encoded line by line with each newline kept, so decode(encode(t)) == t.
// Ids: 0 = <unk>, 1 = end of text (the token file's eot_token, appended after each document);
// no BOS, no padding.
//
// The token file (data/token_file.h) records the tokenizer:
//   attribute tokenizer             "sentencepiece-<bpe|unigram>-<pieces>-<fnv1a64 of the model,
//                                    16 hex digits>": files encoded with the same model match
//   attribute tokenizer_model_path  the model file's absolute path when it was written
//   attribute tokenizer_model_type  "bpe" | "unigram"
//   dataset   /tokenizer_model      uint8: the serialized model itself (the file is
//                                    self-contained: read_tokenizer_model gives it back)
// vocab_size is the model's number of pieces.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/prepare.h"

namespace coil::data {

struct SentencePieceOptions {
  int64_t vocab_size = 8000;
  std::string model_type = "bpe";  // bpe | unigram
  std::string model;               // an existing .model file: encode with it, do not train
  std::string model_out;           // where a trained model goes; empty: <output without .h5>.model
  double character_coverage = 0.9995;
  int64_t input_sentence_size = 2000000;  // lines sampled for training (0: all)
  int64_t max_sentence_length = 16384;    // longer training lines are skipped (bytes)
  bool byte_fallback = true;
  int64_t threads = 0;  // 0: all cores
  uint64_t seed = 0;    // the training sample's seed
  PrepareOptions documents;  // how the inputs split into documents (whole files by default)
  bool verbose = false;      // SentencePiece's own training log on stderr
};

struct SentencePieceStats {
  PrepareStats prepare;   // files, documents, tokens written
  std::string model_path;
  std::string tokenizer;  // the name recorded in the token file
  int64_t vocab_size = 0;
  int64_t eot_token = 1;
  bool trained = false;
};

// True when coil was built with SentencePiece.
bool sentencepiece_available();

// Trains a model on the lines of the inputs (paths or globs) and writes it to `model_path`;
// returns the serialized model.
std::string train_sentencepiece(const std::vector<std::string>& inputs, const std::string& model_path,
                                const SentencePieceOptions& options);

// Trains (unless options.model names a model) and encodes the inputs into a token file.
SentencePieceStats prepare_sentencepiece(const std::vector<std::string>& inputs, const std::string& output,
                                         const SentencePieceOptions& options);

// The serialized model a token file carries (its /tokenizer_model); an error if it has none.
std::string read_tokenizer_model(const std::string& token_file);

// A serialized model loaded once, for encoding and decoding many times (generation).
class SentencePieceModel {
 public:
  explicit SentencePieceModel(const std::string& serialized_model);  // raises when unusable
  ~SentencePieceModel();
  int64_t vocab_size() const;
  int64_t eot_token() const;  // the end-of-sentence piece, coil's end of text
  // As prepare encodes a document (line by line, newlines kept).
  std::vector<int64_t> encode(const std::string& text) const;
  // The text of ids (each in the vocabulary; none the end-of-text id).
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Encoding and decoding with a serialized model (for inspection and tests); decode shows the
// end-of-text id as "\n<|endoftext|>\n".
std::vector<int64_t> sentencepiece_encode(const std::string& serialized_model, const std::string& text);
std::string sentencepiece_decode(const std::string& serialized_model, const std::vector<int64_t>& ids);

}  // namespace coil::data
