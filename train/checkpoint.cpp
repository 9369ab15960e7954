#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "core/version.h"
#include "data/hdf5_util.h"
#include "layers/model.h"
#include "layers/model_facts.h"
#include "core/atomic_file.h"

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
  add_group("carry", c.carried);  // empty without carried state: older files still verify
  std::string s = state_text(c.state) + alias_text(c.aliases);
  h.update(s.data(), s.size());
  return h.h;
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
  for (auto& [n, t] : checkpoint.carried) c.carried.emplace_back(n, storable(t));

  fs::path final_path(path);
  if (final_path.has_parent_path()) fs::create_directories(final_path.parent_path());
  std::string tmp = path + ".tmp";
  {
    h5::Handle f = h5::create_file(tmp);
    write_group(f, "params", c.params, tmp);
    write_group(f, "optim", c.optimizer, tmp);
    if (!c.carried.empty()) write_group(f, "carry", c.carried, tmp);
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
  c.carried = read_group(f, "carry", path);
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

namespace {

// The step of a checkpoint file name "step_<digits>.h5"; false for any other name.
bool checkpoint_step(const std::string& name, int64_t& step) {
  if (name.size() < 9 || name.rfind("step_", 0) != 0 || name.substr(name.size() - 3) != ".h5") return false;
  std::string digits = name.substr(5, name.size() - 8);
  if (digits.empty() || digits.size() > 18 || digits.find_first_not_of("0123456789") != std::string::npos) return false;
  step = std::stoll(digits);
  return true;
}

int64_t step_of(const std::string& path) {
  int64_t step = -1;
  checkpoint_step(fs::path(path).filename().string(), step);
  return step;
}

std::string file_name(const std::string& path) { return fs::path(path).filename().string(); }

}  // namespace

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  fs::path dir = checkpoint_dir(run_dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return {};
  for (auto& e : fs::directory_iterator(dir)) {
    int64_t step = 0;
    if (checkpoint_step(e.path().filename().string(), step)) found.emplace_back(step, e.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

bool load_latest(const std::string& run_dir, Checkpoint& out, std::string* path,
                 const std::function<void(const std::string&)>& warn, const std::function<void(const Checkpoint&)>& usable,
                 std::vector<PassedOver>* passed_over) {
  auto all = list_checkpoints(run_dir);
  std::string previous;  // the message about the last one passed over, finished by the next
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    PassedOver skip{*it, "", true};
    try {
      Checkpoint c = read_checkpoint(*it);
      skip.damaged = false;
      if (usable) usable(c);
      if (!previous.empty() && warn) warn(fmt::format("{}; falling back to {}", previous, file_name(*it)));
      out = std::move(c);
      if (path) *path = *it;
      return true;
    } catch (const Error& e) {
      skip.reason = e.what();
    }
    if (!previous.empty() && warn) warn(previous);
    previous = fmt::format("checkpoint {} {} ({})", file_name(*it), skip.damaged ? "is damaged" : "cannot be used",
                           skip.reason);
    if (passed_over) passed_over->push_back(skip);
  }
  if (!previous.empty() && warn) warn(previous + "; no good checkpoint is left");
  return false;
}

std::vector<std::string> set_aside(const std::vector<PassedOver>& checkpoints) {
  std::vector<std::string> lines;
  for (auto& c : checkpoints) {
    std::string target = c.path + (c.damaged ? ".corrupt" : ".other-model");
    std::error_code ec;
    fs::rename(c.path, target, ec);
    if (ec) fail("checkpoint: cannot move '{}' aside to '{}': {}", c.path, target, ec.message());
    lines.push_back(fmt::format("moved the {} checkpoint {} aside to {}", c.damaged ? "damaged" : "unusable",
                                file_name(c.path), file_name(target)));
  }
  return lines;
}

namespace {

// The newest of `checkpoints` (oldest first) written before the run's first skipped step.
std::string newest_without_skips(const std::vector<std::string>& checkpoints) {
  for (auto it = checkpoints.rbegin(); it != checkpoints.rend(); ++it) {
    try {
      if (read_checkpoint_state(*it).nan_skips == 0) return *it;
    } catch (const Error&) {  // unreadable: not one to keep
    }
  }
  return "";
}

}  // namespace

std::string newest_before_skips(const std::string& run_dir) { return newest_without_skips(list_checkpoints(run_dir)); }

void prune_checkpoints(const std::string& run_dir, int64_t keep_last, const std::string& newest) {
  const int64_t newest_step = step_of(newest);
  std::vector<std::string> candidates;  // oldest first, up to and including `newest`
  for (auto& p : list_checkpoints(run_dir))
    if (step_of(p) <= newest_step) candidates.push_back(p);
  const std::string before_skips =
      read_checkpoint_state(newest).nan_skips > 0 ? newest_without_skips(candidates) : std::string();
  const size_t keep = size_t(std::max<int64_t>(keep_last, 1));
  for (size_t i = 0; i + keep < candidates.size(); ++i)
    if (candidates[i] != before_skips) fs::remove(candidates[i]);
  std::error_code ec;
  fs::path dir = checkpoint_dir(run_dir);
  if (!fs::is_directory(dir, ec)) return;
  for (auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".tmp") fs::remove(e.path(), ec);
}

void check_same_model(const Checkpoint& c, const layers::ModelConfig& m) {
  std::map<std::string, Shape> stored;
  for (auto& [name, t] : c.params) stored[name] = t.shape();
  auto expected = layers::parameter_shapes(m);
  for (auto& [name, shape] : expected) {
    auto it = stored.find(name);
    if (it == stored.end())
      fail("it holds another model: it has no {} ({} in this run's config)", name, shape_str(shape));
    if (it->second != shape)
      fail("it holds another model: {} is {} there but {} in this run's config", name, shape_str(it->second),
           shape_str(shape));
  }
  if (stored.size() != expected.size())
    fail("it holds another model: {} parameters there, {} in this run's config", stored.size(), expected.size());
}

void load_parameters(layers::LanguageModel& model, const NamedTensors& params) {
  layers::StateDict sd;
  for (auto& [name, t] : params) sd[name] = t;
  model.load_state_dict(sd, true);
}

}  // namespace coil::train
