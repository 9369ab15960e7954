#include "data/token_file.h"

#include <glob.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

namespace coil::data {

TokenWriter::TokenWriter(const std::string& path, int64_t vocab_size, const std::string& tokenizer, int64_t eot_token,
                         int64_t chunk_tokens)
    : path_(path), tmp_(path + ".tmp"), vocab_size_(vocab_size), eot_(eot_token) {
  COIL_CHECK(vocab_size > 0 && vocab_size <= (int64_t(1) << 32), "token file: vocab_size {} must be in [1, 2^32]",
             vocab_size);
  COIL_CHECK(eot_token < vocab_size, "token file: eot_token {} is outside the vocabulary of {}", eot_token, vocab_size);
  u32_ = vocab_size > 65536;
  file_ = h5::create_file(tmp_);
  hsize_t dims[1] = {0}, maxdims[1] = {H5S_UNLIMITED}, chunk[1] = {hsize_t(chunk_tokens)};
  h5::Handle space(H5Screate_simple(1, dims, maxdims), H5Sclose);
  h5::Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  H5Pset_chunk(dcpl, 1, chunk);
  dataset_ = h5::Handle(H5Dcreate2(file_, "tokens", u32_ ? H5T_STD_U32LE : H5T_STD_U16LE, space, H5P_DEFAULT, dcpl,
                                   H5P_DEFAULT),
                        H5Dclose);
  COIL_CHECK(dataset_.valid(), "token file: cannot create /tokens in '{}'", tmp_);
  h5::write_attr_i64(file_, "vocab_size", vocab_size);
  h5::write_attr_str(file_, "tokenizer", tokenizer);
  h5::write_attr_i64(file_, "eot_token", eot_token);
  h5::write_attr_str(file_, "format", "coil-tokens");
  h5::write_attr_i64(file_, "format_version", 1);
  buffer_.reserve(size_t(chunk_tokens));
}

TokenWriter::~TokenWriter() {
  if (!closed_) {
    dataset_.reset();
    file_.reset();
    std::remove(tmp_.c_str());
  }
}

void TokenWriter::append(const std::vector<uint32_t>& tokens) { append(tokens.data(), tokens.size()); }

void TokenWriter::append(const uint32_t* tokens, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    COIL_CHECK(int64_t(tokens[i]) < vocab_size_, "token file '{}': token id {} at position {} is outside the vocabulary of {}",
               path_, tokens[i], written_ + int64_t(buffer_.size()), vocab_size_);
    if (doc_offsets_.empty()) doc_offsets_.push_back(0);
    buffer_.push_back(tokens[i]);
    if (buffer_.size() == buffer_.capacity()) flush();
  }
}

void TokenWriter::end_document() {
  if (eot_ >= 0) {
    uint32_t e = uint32_t(eot_);
    append(&e, 1);
  }
  doc_offsets_.push_back(uint64_t(written_ + int64_t(buffer_.size())));
}

void TokenWriter::flush() {
  if (buffer_.empty()) return;
  hsize_t old = hsize_t(written_), n = buffer_.size(), size[1] = {old + n};
  COIL_CHECK(H5Dset_extent(dataset_, size) >= 0, "token file: cannot extend /tokens in '{}'", tmp_);
  h5::Handle fspace(H5Dget_space(dataset_), H5Sclose);
  hsize_t start[1] = {old}, count[1] = {n};
  H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr);
  h5::Handle mspace(H5Screate_simple(1, count, nullptr), H5Sclose);
  COIL_CHECK(H5Dwrite(dataset_, H5T_NATIVE_UINT32, mspace, fspace, H5P_DEFAULT, buffer_.data()) >= 0,
             "token file: cannot write tokens to '{}' (disk full?)", tmp_);
  written_ += int64_t(n);
  buffer_.clear();
}

void TokenWriter::close() {
  if (closed_) return;
  flush();
  // The last document need not end with end_document().
  if (!doc_offsets_.empty() && doc_offsets_.back() != uint64_t(written_)) doc_offsets_.push_back(uint64_t(written_));
  if (doc_offsets_.size() >= 2)
    h5::write_dataset(file_, "doc_offsets", H5T_NATIVE_UINT64, {hsize_t(doc_offsets_.size())}, doc_offsets_.data(),
                      tmp_);
  H5Fflush(file_, H5F_SCOPE_GLOBAL);
  dataset_.reset();
  file_.reset();
  std::filesystem::rename(tmp_, path_);
  closed_ = true;
}

std::vector<std::string> expand_glob(const std::string& pattern) {
  glob_t g{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> out;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) out.emplace_back(g.gl_pathv[i]);
  globfree(&g);
  if (out.empty()) fail("data: no file matches '{}'", pattern);
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// A dataspace that claims more tokens than the file stores (a damaged header) would read as
// fill values; it is refused. Filtered (compressed) data cannot be sized this way: not checked.
void check_storage(hid_t dataset, const TokenFileInfo& info) {
  h5::Handle dcpl(H5Dget_create_plist(dataset), H5Pclose);
  if (H5Pget_nfilters(dcpl) != 0) return;
  const uint64_t needed = uint64_t(info.num_tokens) * (info.u32 ? 4 : 2);
  const uint64_t stored = H5Dget_storage_size(dataset);
  if (stored < needed)
    fail("data: '{}' is damaged: /tokens claims {} tokens ({} bytes) but the file stores {} bytes of them", info.path,
         info.num_tokens, needed, stored);
}

}  // namespace

TokenDataset::TokenDataset(const std::string& pattern, int64_t model_vocab, bool check_ids)
    : pattern_(pattern), model_vocab_(model_vocab), check_ids_(check_ids) {
  for (const auto& path : expand_glob(pattern)) {
    h5::Handle file = h5::open_file(path);
    if (!h5::exists(file, "tokens")) fail("data: '{}' has no /tokens dataset: not a token file (docs/FORMATS.md)", path);
    h5::Handle ds = h5::open_dataset(file, "tokens", path);
    TokenFileInfo info;
    info.path = path;
    auto dims = h5::dataset_dims(ds);
    if (dims.size() != 1) fail("data: '{}': /tokens must be 1-D, it has {} dimensions", path, dims.size());
    info.num_tokens = int64_t(dims[0]);
    h5::Handle type(H5Dget_type(ds), H5Tclose);
    if (H5Tget_class(type) != H5T_INTEGER || H5Tget_sign(type) != H5T_SGN_NONE ||
        (H5Tget_size(type) != 2 && H5Tget_size(type) != 4))
      fail("data: '{}': /tokens must hold uint16 or uint32 ids", path);
    info.u32 = H5Tget_size(type) == 4;
    check_storage(ds, info);
    for (const char* attr : {"vocab_size", "tokenizer", "eot_token"})
      if (!h5::has_attr(file, attr)) fail("data: '{}' lacks the root attribute '{}' (docs/FORMATS.md)", path, attr);
    info.vocab_size = h5::read_attr_i64(file, "vocab_size", path);
    info.eot_token = h5::read_attr_i64(file, "eot_token", path);
    info.tokenizer = h5::read_attr_str(file, "tokenizer", path);
    if (info.vocab_size < 1 || info.vocab_size > (int64_t(1) << 32))
      fail("data: '{}': its vocab_size attribute is {}; it must be in [1, 2^32]", path, info.vocab_size);
    if (info.eot_token < -1 || info.eot_token >= info.vocab_size)
      fail("data: '{}': its eot_token attribute is {}; it must be -1 (none) or an id below vocab_size {}", path,
           info.eot_token, info.vocab_size);
    if (h5::exists(file, "doc_offsets")) {
      h5::Handle od = h5::open_dataset(file, "doc_offsets", path);
      auto odims = h5::dataset_dims(od);
      if (odims.size() != 1 || odims[0] > uint64_t(info.num_tokens) + 1)
        fail("data: '{}' is damaged: /doc_offsets has {} entries for {} tokens (at most one per token, plus one)",
             path, odims.empty() ? 0 : odims[0], info.num_tokens);
      info.doc_offsets.resize(odims[0]);
      if (!info.doc_offsets.empty() &&
          H5Dread(od, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, info.doc_offsets.data()) < 0)
        fail("data: '{}': cannot read /doc_offsets (file damaged?)", path);
    }
    if (model_vocab > 0 && info.vocab_size > model_vocab)
      fail("data: '{}' was tokenized with vocab_size {} ({}) but the model's vocabulary has {} ids "
           "(model.vocab_size): ids up to {} could not be embedded",
           path, info.vocab_size, info.tokenizer, model_vocab, info.vocab_size - 1);
    if (!infos_.empty() && info.tokenizer != infos_[0].tokenizer)
      fail("data: '{}' uses tokenizer '{}' but '{}' uses '{}': one dataset needs one tokenizer", path, info.tokenizer,
           infos_[0].path, infos_[0].tokenizer);
    infos_.push_back(info);
    files_.push_back(std::move(file));
    datasets_.push_back(std::move(ds));
  }
}

int64_t TokenDataset::total_tokens() const {
  int64_t n = 0;
  for (auto& i : infos_) n += i.num_tokens;
  return n;
}

void TokenDataset::read(size_t f, int64_t begin, int64_t count, int64_t* out) const {
  const auto& info = infos_.at(f);
  COIL_CHECK(begin >= 0 && begin + count <= info.num_tokens, "data: '{}': read of tokens [{}, {}) past the end ({})",
             info.path, begin, begin + count, info.num_tokens);
  if (count == 0) return;
  h5::Handle fspace(H5Dget_space(datasets_[f]), H5Sclose);
  hsize_t start[1] = {hsize_t(begin)}, n[1] = {hsize_t(count)};
  H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, n, nullptr);
  h5::Handle mspace(H5Screate_simple(1, n, nullptr), H5Sclose);
  if (H5Dread(datasets_[f], H5T_NATIVE_INT64, mspace, fspace, H5P_DEFAULT, out) < 0)
    fail("data: '{}': cannot read tokens [{}, {}) (file damaged?)", info.path, begin, begin + count);
  if (check_ids_) check_ids(f, begin, count, out);
}

void TokenDataset::check_ids(size_t f, int64_t begin, int64_t count, const int64_t* ids) const {
  if (model_vocab_ <= 0) return;
  for (int64_t i = 0; i < count; ++i)
    if (ids[i] < 0 || ids[i] >= model_vocab_)
      fail("data: '{}': token id {} at position {} is outside the model's vocabulary of {} (model.vocab_size)",
           infos_[f].path, ids[i], begin + i, model_vocab_);
}

void TokenDataset::check_all_ids() const {
  const int64_t chunk = 1 << 20;
  std::vector<int64_t> buf(static_cast<size_t>(chunk));
  for (size_t f = 0; f < infos_.size(); ++f)
    for (int64_t b = 0; b < infos_[f].num_tokens; b += chunk) {
      int64_t n = std::min(chunk, infos_[f].num_tokens - b);
      read(f, b, n, buf.data());
      check_ids(f, b, n, buf.data());
    }
}

}  // namespace coil::data
