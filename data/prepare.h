// Text to token files with the built-in byte-level tokenizer: every byte is its own id
// (0..255) and the end-of-text id 256 follows each document (vocab_size 257, uint16 ids,
// tokenizer "byte"). A document is a whole input file, or one line with `lines_are_documents`
// (JSON-lines style corpora), or a paragraph (text separated by blank lines) with
// `paragraphs_are_documents`.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace coil::data {

constexpr int64_t kByteVocab = 257;
constexpr int64_t kByteEot = 256;

struct PrepareStats {
  int64_t files = 0;
  int64_t documents = 0;
  int64_t tokens = 0;
};

struct PrepareOptions {
  bool lines_are_documents = false;
  bool paragraphs_are_documents = false;
};

// Calls emit with each document of text as the options split it (empty lines and blank
// paragraphs are not documents); every tokenizer splits the same way.
void for_each_document(const std::string& text, const PrepareOptions& options,
                       const std::function<void(const std::string&)>& emit);

// The input files of prepare: each path or glob expanded (sorted), "-" (standard input) as it
// is. No input, no match, or a folder among them is an error naming it.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs);
// The whole text of an input file ("-": standard input).
std::string read_input(const std::string& path);

// Inputs are paths or globs; "-" reads standard input.
PrepareStats prepare_bytes(const std::vector<std::string>& inputs, const std::string& output,
                           const PrepareOptions& options = {});

// The text of byte-level ids (eot shown as "\n<|eot|>\n"), for inspection and tests.
std::string decode_bytes(const std::vector<int64_t>& ids);

}  // namespace coil::data
