// HDF5 token files (docs/FORMATS.md):
//   /tokens        1-D, uint16 when vocab_size <= 65536 else uint32, chunked
//   /doc_offsets   optional, 1-D uint64: start of each document in /tokens, then the total
//   attributes on the root: vocab_size (int), tokenizer (string), eot_token (int),
//                           format ("coil-tokens"), format_version (1)
// A glob of files is one dataset (the files in sorted order).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/hdf5_util.h"

namespace coil::data {

// Streams tokens into a new token file. Written to "<path>.tmp" and renamed by close(), so a
// reader never sees a half-written file.
class TokenWriter {
 public:
  TokenWriter(const std::string& path, int64_t vocab_size, const std::string& tokenizer, int64_t eot_token,
              int64_t chunk_tokens = 1 << 16);
  ~TokenWriter();  // an unclosed writer removes its temporary file
  void append(const std::vector<uint32_t>& tokens);
  void append(const uint32_t* tokens, size_t n);
  void end_document();  // records a document boundary (appends eot_token first if add_eot)
  void close();
  int64_t tokens_written() const { return written_; }
  int64_t documents() const { return int64_t(doc_offsets_.size()); }

 private:
  void flush();
  std::string path_, tmp_;
  int64_t vocab_size_, eot_;
  h5::Handle file_, dataset_;
  bool u32_ = false;
  std::vector<uint32_t> buffer_;
  std::vector<uint64_t> doc_offsets_;
  int64_t written_ = 0;
  bool closed_ = false;
};

// One file's description.
struct TokenFileInfo {
  std::string path;
  int64_t num_tokens = 0;
  int64_t vocab_size = 0;
  int64_t eot_token = -1;
  std::string tokenizer;
  bool u32 = false;
  std::vector<uint64_t> doc_offsets;  // empty when the file has none
};

// Expands a glob (sorted); no match is an error naming the pattern. A plain path is its own match.
std::vector<std::string> expand_glob(const std::string& pattern);

// The files of a glob, open for reading windows.
class TokenDataset {
 public:
  // model_vocab > 0: each file's vocab_size attribute must fit it, and ids read are checked
  // (check_ids) against it; errors name the file and the token position.
  TokenDataset(const std::string& pattern, int64_t model_vocab, bool check_ids = true);
  const std::vector<TokenFileInfo>& files() const { return infos_; }
  int64_t total_tokens() const;
  // Reads tokens [begin, begin + count) of file `f` into out, as int64.
  void read(size_t f, int64_t begin, int64_t count, int64_t* out) const;
  // Checks every id of every file against the vocabulary (reads everything, in chunks).
  void check_all_ids() const;

 private:
  void check_ids(size_t f, int64_t begin, int64_t count, const int64_t* ids) const;
  std::string pattern_;
  int64_t model_vocab_;
  bool check_ids_;
  std::vector<TokenFileInfo> infos_;
  std::vector<h5::Handle> files_, datasets_;
};

}  // namespace coil::data
