#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/version.h"
#include "data/hdf5_util.h"

namespace coil::train {
namespace fs = std::filesystem;

// FNV-1a with 64-bit words (8 bytes folded in at once, then the tail bytewise): the same
// avalanche structure as bytewise FNV-1a at 8x the speed. Documented in docs/FORMATS.md.
void Fnv1a::update(const void* data, size_t n) {
  const uint64_t prime = 0x100000001b3ull;
  const auto* p = static_cast<const unsigned char*>(data);
  size_t words = n / 8;
  for (size_t i = 0; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);
    h ^= w;
    h *= prime;
  }
  for (size_t i = words * 8; i < n; ++i) {
    h ^= p[i];
    h *= prime;
  }
}

namespace {

const char* kFormat = "coil-checkpoint";
constexpr int64_t kFormatVersion = 1;

hid_t h5_type(DType t) {
  switch (t) {
    case DType::f32: return H5T_NATIVE_FLOAT;
    case DType::f64: return H5T_NATIVE_DOUBLE;
    case DType::i32: return H5T_NATIVE_INT32;
    case DType::i64: return H5T_NATIVE_INT64;
    default: fail("checkpoint: no HDF5 type for {}", dtype_name(t));
  }
}

// What is stored: bf16 values are widened to f32.
Tensor storable(const Tensor& t) {
  Tensor c = t.device().is_cpu() ? t : t.to(Device::cpu());
  if (c.dtype() == DType::bf16) c = c.to(DType::f32);
  return c;
}

void hash_tensor(Fnv1a& h, const std::string& name, const Tensor& t) {
  h.update(name.data(), name.size());
  const char* dt = dtype_name(t.dtype());
  h.update(dt, std::strlen(dt));
  for (int64_t d : t.shape()) h.update(&d, sizeof(d));
  h.update(t.raw(), t.nbytes());
}

// world_size joined the attributes later; it is hashed only when it is not 1, so that files
// written before it still verify.
std::string state_text(const TrainState& s) {
  return fmt::format("step={};tokens_seen={};nan_skips={};sampler={},{};rng={},{};last_lr={};best_val_loss={};config={}",
                     s.step, s.tokens_seen, s.nan_skips, s.sampler_seed, s.sampler_examples, s.rng_seed, s.rng_offset,
                     s.last_lr, s.best_val_loss, s.config_yaml) +
         (s.world_size != 1 ? fmt::format(";world_size={}", s.world_size) : "");
}

std::string alias_text(const std::vector<std::pair<std::string, std::string>>& aliases) {
  std::string out;
  for (auto& [a, p] : aliases) out += a + "=" + p + "\n";
  return out;
}

uint64_t checksum(const Checkpoint& c) {
  // Name order, as the file lists datasets.
  Fnv1a h;
  auto add_group = [&](const std::string& group, const NamedTensors& tensors) {
    std::vector<const std::pair<std::string, Tensor>*> sorted;
    for (auto& kv : tensors) sorted.push_back(&kv);
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->first < b->first; });
    for (auto* kv : sorted) hash_tensor(h, group + "/" + kv->first, kv->second);
  };
  add_group("params", c.params);
  add_group("optim", c.optimizer);
  std::string s = state_text(c.state) + alias_text(c.aliases);
  h.update(s.data(), s.size());
  return h.h;
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_group(hid_t file, const std::string& group, const NamedTensors& tensors, const std::string& path) {
  h5::Handle g(H5Gcreate2(file, group.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  COIL_CHECK(g.valid(), "checkpoint: cannot create group '{}' in '{}'", group, path);
  std::map<std::string, int> seen;
  for (auto& [name, t] : tensors) {
    COIL_CHECK(seen[name]++ == 0, "checkpoint: tensor '{}/{}' given twice", group, name);
    COIL_CHECK(name.find('/') == std::string::npos, "checkpoint: tensor name '{}' may not contain '/'", name);
    std::vector<hsize_t> dims(t.shape().begin(), t.shape().end());
    h5::write_dataset(g, name, h5_type(t.dtype()), dims, t.raw(), path);
  }
}

NamedTensors read_group(hid_t file, const std::string& group, const std::string& path) {
  NamedTensors out;
  if (!h5::exists(file, group)) return out;
  h5::Handle g(H5Gopen2(file, group.c_str(), H5P_DEFAULT), H5Gclose);
  COIL_CHECK(g.valid(), "checkpoint: cannot open group '{}' in '{}'", group, path);
  H5G_info_t info;
  COIL_CHECK(H5Gget_info(g, &info) >= 0, "checkpoint: cannot list '{}' in '{}'", group, path);
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    COIL_CHECK(len >= 0, "checkpoint: cannot read the names in '{}' of '{}'", group, path);
    std::string name(size_t(len), '\0');
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), size_t(len) + 1, H5P_DEFAULT);
    h5::Handle d = h5::open_dataset(g, name, path);
    h5::Handle type(H5Dget_type(d), H5Tclose);
    DType dt;
    if (H5Tget_class(type) == H5T_FLOAT)
      dt = H5Tget_size(type) == 8 ? DType::f64 : DType::f32;
    else if (H5Tget_class(type) == H5T_INTEGER)
      dt = H5Tget_size(type) == 8 ? DType::i64 : DType::i32;
    else
      fail("checkpoint: '{}' in '{}' has an unsupported type", group + "/" + name, path);
    auto dims = h5::dataset_dims(d);
    Shape shape(dims.begin(), dims.end());
    Tensor t = Tensor::empty(shape, dt);
    if (t.numel() > 0 && H5Dread(d, h5_type(dt), H5S_ALL, H5S_ALL, H5P_DEFAULT, t.raw()) < 0)
      fail("checkpoint: cannot read '{}/{}' from '{}' (truncated or damaged file)", group, name, path);
    out.emplace_back(name, t);
  }
  return out;
}

TrainState read_state(hid_t f, const std::string& path) {
  if (!h5::has_attr(f, "format") || h5::read_attr_str(f, "format", path) != kFormat)
    fail("checkpoint: '{}' is not a coil checkpoint (no format attribute '{}')", path, kFormat);
  int64_t version = h5::read_attr_i64(f, "format_version", path);
  COIL_CHECK(version == kFormatVersion, "checkpoint: '{}' has format version {}; this build reads {}", path, version,
             kFormatVersion);
  TrainState s;
  s.step = h5::read_attr_i64(f, "step", path);
  s.tokens_seen = h5::read_attr_i64(f, "tokens_seen", path);
  s.nan_skips = h5::read_attr_i64(f, "nan_skips", path);
  s.sampler_seed = h5::read_attr_u64(f, "sampler_seed", path);
  s.sampler_examples = h5::read_attr_u64(f, "sampler_examples", path);
  s.rng_seed = h5::read_attr_u64(f, "rng_seed", path);
  s.rng_offset = h5::read_attr_u64(f, "rng_offset", path);
  s.last_lr = h5::read_attr_f64(f, "last_lr", path);
  s.best_val_loss = h5::read_attr_f64(f, "best_val_loss", path);
  s.config_yaml = h5::read_attr_str(f, "config", path);
  s.world_size = h5::has_attr(f, "world_size") ? h5::read_attr_i64(f, "world_size", path) : 1;
  s.coil_version = h5::has_attr(f, "coil_version") ? h5::read_attr_str(f, "coil_version", path) : "";
  return s;
}

}  // namespace

void write_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  Checkpoint c;
  c.state = checkpoint.state;
  c.aliases = checkpoint.aliases;
  for (auto& [n, t] : checkpoint.params) c.params.emplace_back(n, storable(t));
  for (auto& [n, t] : checkpoint.optimizer) c.optimizer.emplace_back(n, storable(t));

  fs::path final_path(path);
  if (final_path.has_parent_path()) fs::create_directories(final_path.parent_path());
  std::string tmp = path + ".tmp";
  {
    h5::Handle f = h5::create_file(tmp);
    write_group(f, "params", c.params, tmp);
    write_group(f, "optim", c.optimizer, tmp);
    const TrainState& s = c.state;
    h5::write_attr_str(f, "format", kFormat);
    h5::write_attr_i64(f, "format_version", kFormatVersion);
    h5::write_attr_i64(f, "step", s.step);
    h5::write_attr_i64(f, "tokens_seen", s.tokens_seen);
    h5::write_attr_i64(f, "nan_skips", s.nan_skips);
    h5::write_attr_u64(f, "sampler_seed", s.sampler_seed);
    h5::write_attr_u64(f, "sampler_examples", s.sampler_examples);
    h5::write_attr_u64(f, "rng_seed", s.rng_seed);
    h5::write_attr_u64(f, "rng_offset", s.rng_offset);
    h5::write_attr_f64(f, "last_lr", s.last_lr);
    h5::write_attr_f64(f, "best_val_loss", s.best_val_loss);
    h5::write_attr_str(f, "config", s.config_yaml);
    h5::write_attr_i64(f, "world_size", s.world_size);
    h5::write_attr_str(f, "coil_version", version_string());
    h5::write_attr_str(f, "aliases", alias_text(c.aliases));
    h5::write_attr_u64(f, "checksum", checksum(c));
    COIL_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0, "checkpoint: cannot flush '{}' (disk full?)", tmp);
  }
  fsync_path(tmp, false);
  std::error_code ec;
  fs::rename(tmp, final_path, ec);
  if (ec) fail("checkpoint: cannot rename '{}' to '{}': {}", tmp, path, ec.message());
  fsync_path(final_path.has_parent_path() ? final_path.parent_path().string() : ".", true);
}

TrainState read_checkpoint_state(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  return read_state(f, path);
}

Checkpoint read_checkpoint(const std::string& path) {
  h5::Handle f = h5::open_file(path);
  Checkpoint c;
  c.state = read_state(f, path);
  c.params = read_group(f, "params", path);
  c.optimizer = read_group(f, "optim", path);
  std::string aliases = h5::has_attr(f, "aliases") ? h5::read_attr_str(f, "aliases", path) : "";
  size_t pos = 0;
  while (pos < aliases.size()) {
    size_t end = aliases.find('\n', pos);
    if (end == std::string::npos) end = aliases.size();
    std::string line = aliases.substr(pos, end - pos);
    size_t eq = line.find('=');
    if (eq != std::string::npos) c.aliases.emplace_back(line.substr(0, eq), line.substr(eq + 1));
    pos = end + 1;
  }
  if (!h5::has_attr(f, "checksum")) fail("checkpoint: '{}' has no checksum (written incompletely?)", path);
  uint64_t stored = h5::read_attr_u64(f, "checksum", path);
  // The checksum covers tensors in name order; read_group lists them in name order too.
  uint64_t actual = checksum(c);
  if (stored != actual)
    fail("checkpoint: '{}' is corrupt: checksum {:016x} does not match the stored {:016x}", path, actual, stored);
  return c;
}

std::string checkpoint_dir(const std::string& run_dir) { return (fs::path(run_dir) / "checkpoints").string(); }

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  return (fs::path(checkpoint_dir(run_dir)) / fmt::format("step_{:08d}.h5", step)).string();
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  fs::path dir = checkpoint_dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (auto& e : fs::directory_iterator(dir)) {
    std::string name = e.path().filename().string();
    if (name.size() < 9 || name.rfind("step_", 0) != 0 || name.substr(name.size() - 3) != ".h5") continue;
    std::string digits = name.substr(5, name.size() - 8);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    found.emplace_back(std::stoll(digits), e.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

bool load_latest(const std::string& run_dir, Checkpoint& out, std::string* path,
                 const std::function<void(const std::string&)>& warn) {
  auto all = list_checkpoints(run_dir);
  std::string damaged;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      out = read_checkpoint(*it);
      if (!damaged.empty() && warn)
        warn(fmt::format("{}; falling back to {}", damaged, fs::path(*it).filename().string()));
      if (path) *path = *it;
      return true;
    } catch (const Error& e) {
      if (!damaged.empty() && warn) warn(damaged);
      damaged = fmt::format("checkpoint {} is damaged ({})", fs::path(*it).filename().string(), e.what());
    }
  }
  if (!damaged.empty() && warn) warn(damaged + "; no good checkpoint is left");
  return false;
}

void prune_checkpoints(const std::string& run_dir, int64_t keep_last) {
  auto all = list_checkpoints(run_dir);
  for (size_t i = 0; i + size_t(std::max<int64_t>(keep_last, 1)) < all.size(); ++i) fs::remove(all[i]);
  std::error_code ec;
  fs::path dir = checkpoint_dir(run_dir);
  if (!fs::is_directory(dir, ec)) return;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp") fs::remove(e.path(), ec);
}

// ---- safetensors ----

namespace {

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (static_cast<unsigned char>(c) < 0x20) out += fmt::format("\\u{:04x}", int(c));
    else out += c;
  }
  return out;
}

// A minimal JSON reader for safetensors headers: objects, arrays, strings, integers.
struct Json {
  enum Kind { Object, Array, String, Number } kind = Number;
  std::vector<std::pair<std::string, Json>> object;
  std::vector<Json> array;
  std::string str;
  int64_t num = 0;
  const Json& at(const std::string& key) const {
    for (auto& kv : object)
      if (kv.first == key) return kv.second;
    fail("safetensors: header entry lacks '{}'", key);
  }
};

struct JsonParser {
  const std::string& s;
  size_t i = 0;
  void ws() {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  }
  char peek() {
    ws();
    COIL_CHECK(i < s.size(), "safetensors: the JSON header ends early");
    return s[i];
  }
  void expect(char c) {
    COIL_CHECK(peek() == c, "safetensors: bad JSON header at byte {}: expected '{}'", i, c);
    ++i;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (i < s.size() && s[i] != '"') {
      if (s[i] == '\\' && i + 1 < s.size()) {
        ++i;
        if (s[i] == 'u' && i + 4 < s.size()) {
          out += char(std::stoi(s.substr(i + 1, 4), nullptr, 16));
          i += 5;
          continue;
        }
        char c = s[i++];
        out += c == 'n' ? '\n' : c == 't' ? '\t' : c;
        continue;
      }
      out += s[i++];
    }
    expect('"');
    return out;
  }
  Json value() {
    Json j;
    char c = peek();
    if (c == '{') {
      j.kind = Json::Object;
      ++i;
      if (peek() == '}') return ++i, j;
      while (true) {
        std::string k = string();
        expect(':');
        j.object.emplace_back(k, value());
        if (peek() == ',') {
          ++i;
          continue;
        }
        expect('}');
        return j;
      }
    }
    if (c == '[') {
      j.kind = Json::Array;
      ++i;
      if (peek() == ']') return ++i, j;
      while (true) {
        j.array.push_back(value());
        if (peek() == ',') {
          ++i;
          continue;
        }
        expect(']');
        return j;
      }
    }
    if (c == '"') {
      j.kind = Json::String;
      j.str = string();
      return j;
    }
    size_t start = i;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '-')) ++i;
    COIL_CHECK(i > start, "safetensors: bad JSON header at byte {}", start);
    j.num = std::stoll(s.substr(start, i - start));
    return j;
  }
};

}  // namespace

void write_safetensors(const std::string& path, const NamedTensors& tensors, const std::string& dtype,
                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  COIL_CHECK(dtype == "F32" || dtype == "BF16", "safetensors: dtype must be F32 or BF16, got '{}'", dtype);
  DType dt = dtype == "F32" ? DType::f32 : DType::bf16;
  std::vector<Tensor> data;
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i)
      header += fmt::format("{}\"{}\":\"{}\"", i ? "," : "", json_escape(metadata[i].first),
                            json_escape(metadata[i].second));
    header += "}";
  }
  size_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Tensor t = tensors[i].second.to(Device::cpu(), dt);
    std::string shape;
    for (size_t d = 0; d < t.shape().size(); ++d) shape += (d ? "," : "") + std::to_string(t.shape()[d]);
    header += fmt::format("{}\"{}\":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}",
                          (i || !metadata.empty()) ? "," : "", json_escape(tensors[i].first), dtype, shape, offset,
                          offset + t.nbytes());
    offset += t.nbytes();
    data.push_back(t);
  }
  header += "}";
  while ((8 + header.size()) % 8 != 0) header += ' ';  // the data starts 8-byte aligned
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    COIL_CHECK(out.good(), "safetensors: cannot write '{}'", tmp);
    uint64_t n = header.size();
    unsigned char len[8];
    for (int b = 0; b < 8; ++b) len[b] = static_cast<unsigned char>(n >> (8 * b));  // little-endian
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(header.data(), std::streamsize(header.size()));
    for (auto& t : data) out.write(static_cast<const char*>(t.raw()), std::streamsize(t.nbytes()));
    COIL_CHECK(out.good(), "safetensors: writing '{}' failed (disk full?)", tmp);
  }
  fs::rename(tmp, path);
}

NamedTensors read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  COIL_CHECK(in.good(), "safetensors: cannot read '{}'", path);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= uint64_t(len[b]) << (8 * b);
  COIL_CHECK(in.good() && n < (uint64_t(1) << 30), "safetensors: '{}' has no valid header", path);
  std::string header(n, '\0');
  in.read(header.data(), std::streamsize(n));
  JsonParser parser{header};
  Json root = parser.value();
  NamedTensors out;
  std::vector<char> body((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (auto& [name, entry] : root.object) {
    if (name == "__metadata__") continue;
    std::string dt = entry.at("dtype").str;
    DType dtype = dt == "F32" ? DType::f32 : dt == "BF16" ? DType::bf16 : dt == "F64" ? DType::f64 : dt == "I64" ? DType::i64 : DType::i32;
    COIL_CHECK(dt == "F32" || dt == "BF16" || dt == "F64" || dt == "I64" || dt == "I32",
               "safetensors: '{}' in '{}' has dtype {}", name, path, dt);
    Shape shape;
    for (auto& d : entry.at("shape").array) shape.push_back(d.num);
    int64_t begin = entry.at("data_offsets").array.at(0).num, end = entry.at("data_offsets").array.at(1).num;
    Tensor t = Tensor::empty(shape, dtype);
    COIL_CHECK(end - begin == int64_t(t.nbytes()) && end <= int64_t(body.size()),
               "safetensors: '{}' in '{}' has inconsistent offsets", name, path);
    std::memcpy(t.raw(), body.data() + begin, t.nbytes());
    out.emplace_back(name, t);
  }
  return out;
}

}  // namespace coil::train
