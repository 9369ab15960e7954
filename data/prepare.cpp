#include "data/prepare.h"

#include <fstream>
#include <iostream>
#include <iterator>

#include "data/token_file.h"

namespace coil::data {
namespace {

void emit_document(TokenWriter& w, const std::string& text, PrepareStats& stats) {
  std::vector<uint32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  w.append(ids);
  w.end_document();
  stats.documents += 1;
  stats.tokens += int64_t(ids.size()) + 1;
}

}  // namespace

void for_each_document(const std::string& text, const PrepareOptions& o,
                       const std::function<void(const std::string&)>& emit) {
  if (o.lines_are_documents) {
    size_t begin = 0;
    while (begin < text.size()) {
      size_t end = text.find('\n', begin);
      if (end == std::string::npos) end = text.size();
      if (end > begin) emit(text.substr(begin, end - begin));
      begin = end + 1;
    }
  } else if (o.paragraphs_are_documents) {
    size_t begin = 0;
    while (begin < text.size()) {
      size_t end = text.find("\n\n", begin);
      if (end == std::string::npos) end = text.size();
      std::string para = text.substr(begin, end - begin);
      if (para.find_first_not_of(" \t\n\r") != std::string::npos) emit(para);
      begin = end + 2;
    }
  } else if (!text.empty()) {
    emit(text);
  }
}

PrepareStats prepare_bytes(const std::vector<std::string>& inputs, const std::string& output,
                           const PrepareOptions& options) {
  if (inputs.empty()) fail("prepare: no input files given");
  TokenWriter w(output, kByteVocab, "byte", kByteEot);
  PrepareStats stats;
  for (const auto& pattern : inputs) {
    std::vector<std::string> paths = pattern == "-" ? std::vector<std::string>{"-"} : expand_glob(pattern);
    for (const auto& path : paths) {
      std::string text;
      if (path == "-") {
        text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
      } else {
        std::ifstream in(path, std::ios::binary);
        if (!in) fail("prepare: cannot read '{}'", path);
        text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      }
      for_each_document(text, options, [&](const std::string& doc) { emit_document(w, doc, stats); });
      stats.files += 1;
    }
  }
  if (stats.tokens == 0) fail("prepare: the inputs hold no text");
  w.close();
  return stats;
}

std::string decode_bytes(const std::vector<int64_t>& ids) {
  std::string out;
  for (int64_t id : ids) {
    if (id == kByteEot)
      out += "\n<|eot|>\n";
    else if (id >= 0 && id < 256)
      out += char(id);
    else
      out += "<?>";
  }
  return out;
}

}  // namespace coil::data
