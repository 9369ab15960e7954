#include "data/prepare.h"

#include <filesystem>
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

std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  if (inputs.empty()) fail("prepare: no input files given");
  std::vector<std::string> out;
  for (const auto& pattern : inputs) {
    if (pattern == "-") {
      out.push_back(pattern);
      continue;
    }
    for (const auto& path : expand_glob(pattern)) {
      std::error_code ec;
      if (std::filesystem::is_directory(path, ec))
        fail("prepare: '{}' is a folder; give the text files in it (e.g. '{}')", path,
             (std::filesystem::path(path) / "*.txt").lexically_normal().string());
      out.push_back(path);
    }
  }
  return out;
}

std::string read_input(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("prepare: cannot read '{}'", path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

PrepareStats prepare_bytes(const std::vector<std::string>& inputs, const std::string& output,
                           const PrepareOptions& options) {
  const std::vector<std::string> paths = expand_inputs(inputs);
  TokenWriter w(output, kByteVocab, "byte", kByteEot);
  PrepareStats stats;
  for (const auto& path : paths) {
    for_each_document(read_input(path), options, [&](const std::string& doc) { emit_document(w, doc, stats); });
    stats.files += 1;
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
