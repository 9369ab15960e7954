#include <filesystem>
#include <fstream>

#include "core/random.h"
#include "core/version.h"
#include "data/hdf5_util.h"
#include "tests/catch.h"
#include "tests/util.h"
#include "train/checkpoint.h"
#include "train/safetensors.h"

using namespace coil;
using namespace coil::train;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {
fs::path test_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("coil_test_ckpt_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

Checkpoint make_checkpoint(int64_t step, uint64_t seed = 1) {
  Checkpoint c;
  c.state.step = step;
  c.state.tokens_seen = step * 4096;
  c.state.nan_skips = 2;
  c.state.sampler_seed = 7;
  c.state.sampler_examples = uint64_t(step) * 16;
  c.state.rng_seed = 9;
  c.state.rng_offset = 12345678901234ull;
  c.state.last_lr = 3.0000000000000001e-4;
  c.state.best_val_loss = 2.5;
  c.state.config_yaml = "run:\n  name: \"t\"\n";
  c.params = {{"backbone.embedding.weight", test::random_normal({32, 8}, seed)},
              {"backbone.layers.0.mixer.A_log", test::random_normal({16, 4}, seed + 1)},
              {"backbone.norm_f.weight", Tensor::ones({8})}};
  c.optimizer = {{"exp_avg.backbone.embedding.weight", test::random_normal({32, 8}, seed + 2)},
                 {"exp_avg_sq.backbone.embedding.weight", test::random_normal({32, 8}, seed + 3)},
                 {"step", Tensor::from_vector(std::vector<int64_t>{step}, {1})}};
  c.aliases = {{"lm_head.weight", "backbone.embedding.weight"}};
  return c;
}

const Tensor& find(const NamedTensors& ts, const std::string& name) {
  for (auto& kv : ts)
    if (kv.first == name) return kv.second;
  FAIL("no tensor " << name);
  static Tensor none;
  return none;
}

// Flips one bit of a tensor's data where it lies in the file (as a disk or a copy might).
void corrupt(const std::string& path, const Tensor& t) {
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  size_t pos = bytes.find(std::string(static_cast<const char*>(t.raw()), 64));
  REQUIRE(pos != std::string::npos);
  bytes[pos + 37] = char(bytes[pos + 37] ^ 0x10);
  std::ofstream(path, std::ios::binary) << bytes;
}
}  // namespace

TEST_CASE("a checkpoint round-trips bitwise: tensors, state, config, aliases", "[checkpoint]") {
  auto dir = test_dir("rt");
  std::string path = checkpoint_path(dir.string(), 100);
  REQUIRE(fs::path(path).filename() == "step_00000100.h5");
  Checkpoint c = make_checkpoint(100);
  write_checkpoint(path, c);
  REQUIRE(fs::exists(path));
  REQUIRE(!fs::exists(path + ".tmp"));
  Checkpoint r = read_checkpoint(path);
  REQUIRE(r.params.size() == 3);
  REQUIRE(r.optimizer.size() == 3);
  for (auto& [name, t] : c.params) REQUIRE(test::bitwise_equal(find(r.params, name), t));
  for (auto& [name, t] : c.optimizer) REQUIRE(test::bitwise_equal(find(r.optimizer, name), t));
  REQUIRE(find(r.params, "backbone.embedding.weight").shape() == Shape{32, 8});
  REQUIRE(r.state.step == 100);
  REQUIRE(r.state.tokens_seen == 409600);
  REQUIRE(r.state.nan_skips == 2);
  REQUIRE(r.state.sampler_examples == 1600);
  REQUIRE(r.state.rng_offset == 12345678901234ull);
  REQUIRE(r.state.last_lr == c.state.last_lr);
  REQUIRE(r.state.config_yaml == c.state.config_yaml);
  REQUIRE(r.aliases == c.aliases);
  REQUIRE(read_checkpoint_state(path).step == 100);
  // bf16 tensors are stored widened to f32.
  Checkpoint b = make_checkpoint(1);
  b.params[0].second = b.params[0].second.to(DType::bf16);
  write_checkpoint(path, b);
  REQUIRE(find(read_checkpoint(path).params, "backbone.embedding.weight").dtype() == DType::f32);
}

TEST_CASE("a checkpoint records the coil that wrote it; one from before that record still reads", "[checkpoint]") {
  auto dir = test_dir("version");
  std::string path = checkpoint_path(dir.string(), 10);
  Checkpoint c = make_checkpoint(10);
  c.state.coil_version = "ignored: the writer records its own";
  write_checkpoint(path, c);
  REQUIRE(read_checkpoint(path).state.coil_version == version_string());
  REQUIRE(read_checkpoint_state(path).coil_version == version_string());
  {
    h5::Handle f = h5::open_file(path, true);
    REQUIRE(H5Adelete(f, "coil_version") >= 0);
  }
  Checkpoint old = read_checkpoint(path);  // the checksum still holds
  REQUIRE(old.state.coil_version.empty());
  REQUIRE(old.state.step == 10);
  REQUIRE(test::bitwise_equal(find(old.params, "backbone.embedding.weight"), c.params[0].second));
}

TEST_CASE("the checksum detects corruption; a damaged newest checkpoint falls back to the previous", "[checkpoint]") {
  auto dir = test_dir("corrupt");
  std::string run = dir.string();
  for (int64_t step : {10, 20, 30}) write_checkpoint(checkpoint_path(run, step), make_checkpoint(step, uint64_t(step)));
  REQUIRE(list_checkpoints(run).size() == 3);

  // A flipped byte inside the tensor data: the checksum no longer matches.
  std::string newest = checkpoint_path(run, 30);
  corrupt(newest, make_checkpoint(30, 30).params[1].second);
  REQUIRE_THROWS_WITH(read_checkpoint(newest), Contains("step_00000030.h5") && Contains("is corrupt: checksum"));
  std::vector<std::string> warnings;
  Checkpoint got;
  std::string used;
  REQUIRE(load_latest(run, got, &used, [&](const std::string& w) { warnings.push_back(w); }));
  REQUIRE(got.state.step == 20);
  REQUIRE(fs::path(used).filename() == "step_00000020.h5");
  REQUIRE(warnings.size() == 1);
  REQUIRE_THAT(warnings[0], Contains("checkpoint step_00000030.h5 is damaged") && Contains("falling back to step_00000020.h5"));

  // A truncated file (a crash while copying, a full disk) is refused too.
  std::string middle = checkpoint_path(run, 20);
  fs::resize_file(middle, fs::file_size(middle) / 2);
  REQUIRE_THROWS(read_checkpoint(middle));
  warnings.clear();
  REQUIRE(load_latest(run, got, &used, [&](const std::string& w) { warnings.push_back(w); }));
  REQUIRE(got.state.step == 10);
  REQUIRE(warnings.size() == 2);
  REQUIRE_THAT(warnings[1], Contains("falling back to step_00000010.h5"));

  // Nothing usable left.
  corrupt(checkpoint_path(run, 10), make_checkpoint(10, 10).optimizer[0].second);
  warnings.clear();
  REQUIRE(!load_latest(run, got, &used, [&](const std::string& w) { warnings.push_back(w); }));
  REQUIRE_THAT(warnings.back(), Contains("no good checkpoint is left"));
  // A run without checkpoints.
  REQUIRE(!load_latest((dir / "empty").string(), got));
}

TEST_CASE("a corrupt tensor byte is caught by the checksum itself", "[checkpoint]") {
  auto dir = test_dir("bytes");
  std::string path = checkpoint_path(dir.string(), 1);
  Checkpoint c = make_checkpoint(1);
  c.params = {{"w", Tensor::full({4096}, 1.5)}};
  c.optimizer.clear();
  write_checkpoint(path, c);
  // Find the tensor's bytes (1.5f = 0x3fc00000) in the file and change one value.
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  float v = 1.5f;
  std::string needle(reinterpret_cast<const char*>(&v), 4);
  size_t pos = bytes.find(needle + needle + needle + needle);
  REQUIRE(pos != std::string::npos);
  bytes[pos + 4 * 100 + 3] ^= 0x01;
  std::ofstream(path, std::ios::binary) << bytes;
  REQUIRE_THROWS_WITH(read_checkpoint(path), Contains("is corrupt: checksum"));
}

TEST_CASE("only the last K checkpoints are kept; stale temporary files go", "[checkpoint]") {
  auto dir = test_dir("keep");
  std::string run = dir.string();
  for (int64_t step = 1; step <= 5; ++step) write_checkpoint(checkpoint_path(run, step * 100), make_checkpoint(step));
  std::ofstream(checkpoint_path(run, 600) + ".tmp") << "half written";
  // A file that is not a checkpoint is left alone and not listed.
  std::ofstream(fs::path(checkpoint_dir(run)) / "notes.txt") << "x";
  REQUIRE(list_checkpoints(run).size() == 5);
  prune_checkpoints(run, 2, checkpoint_path(run, 500));
  auto left = list_checkpoints(run);
  REQUIRE(left.size() == 2);
  REQUIRE(fs::path(left[0]).filename() == "step_00000400.h5");
  REQUIRE(fs::path(left[1]).filename() == "step_00000500.h5");
  REQUIRE(!fs::exists(checkpoint_path(run, 600) + ".tmp"));
  REQUIRE(fs::exists(fs::path(checkpoint_dir(run)) / "notes.txt"));
  // Steps sort numerically, past 8 digits too.
  write_checkpoint(checkpoint_path(run, 123456789), make_checkpoint(3));
  REQUIRE(fs::path(list_checkpoints(run).back()).filename() == "step_123456789.h5");
}

TEST_CASE("a damaged newest checkpoint is set aside, so that pruning keeps the good one written after it",
          "[checkpoint]") {
  std::string run = test_dir("aside").string();
  for (int64_t step : {100, 200, 300}) write_checkpoint(checkpoint_path(run, step), make_checkpoint(step, uint64_t(step)));
  fs::resize_file(checkpoint_path(run, 300), fs::file_size(checkpoint_path(run, 300)) / 2);
  Checkpoint got;
  std::vector<PassedOver> passed;
  REQUIRE(load_latest(run, got, nullptr, nullptr, nullptr, &passed));
  REQUIRE(got.state.step == 200);
  REQUIRE(passed.size() == 1);
  REQUIRE(passed[0].path == checkpoint_path(run, 300));
  REQUIRE(passed[0].damaged);
  auto moved = set_aside(passed);
  REQUIRE(moved.size() == 1);
  REQUIRE_THAT(moved[0], Contains("damaged checkpoint step_00000300.h5 aside to step_00000300.h5.corrupt"));
  REQUIRE(fs::exists(checkpoint_path(run, 300) + ".corrupt"));  // the evidence stays
  // The resumed run writes step 250; keep_last 1 keeps it, not the damaged step 300.
  write_checkpoint(checkpoint_path(run, 250), make_checkpoint(250));
  prune_checkpoints(run, 1, checkpoint_path(run, 250));
  auto left = list_checkpoints(run);
  REQUIRE(left.size() == 1);
  REQUIRE(left[0] == checkpoint_path(run, 250));
  REQUIRE(fs::exists(checkpoint_path(run, 300) + ".corrupt"));
}

TEST_CASE("pruning never deletes the checkpoint just written, whatever lies above it", "[checkpoint]") {
  std::string run = test_dir("above").string();
  for (int64_t step : {100, 200, 300}) write_checkpoint(checkpoint_path(run, step), make_checkpoint(step));
  fs::resize_file(checkpoint_path(run, 300), 100);  // damaged, and not set aside
  write_checkpoint(checkpoint_path(run, 250), make_checkpoint(250));
  prune_checkpoints(run, 1, checkpoint_path(run, 250));
  REQUIRE(fs::exists(checkpoint_path(run, 250)));
  REQUIRE(!fs::exists(checkpoint_path(run, 200)));
  REQUIRE(fs::exists(checkpoint_path(run, 300)));  // neither counted nor deleted
}

TEST_CASE("after skipped steps, the newest checkpoint from before the first one survives pruning", "[checkpoint]") {
  std::string run = test_dir("skips").string();
  const std::vector<int64_t> skips = {0, 0, 1, 2, 2, 3};  // at steps 1..6
  for (int64_t step = 1; step <= 6; ++step) {
    Checkpoint c = make_checkpoint(step);
    c.state.nan_skips = skips[size_t(step - 1)];
    write_checkpoint(checkpoint_path(run, step), c);
    prune_checkpoints(run, 2, checkpoint_path(run, step));
  }
  auto left = list_checkpoints(run);
  REQUIRE(left.size() == 3);
  REQUIRE(left[0] == checkpoint_path(run, 2));  // nan_skips 0: kept
  REQUIRE(left[1] == checkpoint_path(run, 5));
  REQUIRE(left[2] == checkpoint_path(run, 6));
  REQUIRE(newest_before_skips(run) == checkpoint_path(run, 2));
  // A run without skips keeps only the last K.
  std::string clean = test_dir("noskips").string();
  for (int64_t step = 1; step <= 4; ++step) {
    Checkpoint c = make_checkpoint(step);
    c.state.nan_skips = 0;
    write_checkpoint(checkpoint_path(clean, step), c);
    prune_checkpoints(clean, 2, checkpoint_path(clean, step));
  }
  REQUIRE(list_checkpoints(clean).size() == 2);
}

TEST_CASE("a checkpoint that `usable` refuses is passed over and set aside as .other-model", "[checkpoint]") {
  std::string run = test_dir("usable").string();
  for (int64_t step : {1, 2}) write_checkpoint(checkpoint_path(run, step), make_checkpoint(step));
  auto only_step_1 = [](const Checkpoint& c) {
    if (c.state.step != 1) fail("it holds another model");
  };
  std::vector<std::string> warnings;
  std::vector<PassedOver> passed;
  Checkpoint got;
  std::string used;
  REQUIRE(load_latest(run, got, &used, [&](const std::string& w) { warnings.push_back(w); }, only_step_1, &passed));
  REQUIRE(got.state.step == 1);
  REQUIRE(warnings.size() == 1);
  REQUIRE_THAT(warnings[0], Contains("checkpoint step_00000002.h5 cannot be used (it holds another model); falling "
                                     "back to step_00000001.h5"));
  REQUIRE(passed.size() == 1);
  REQUIRE(!passed[0].damaged);
  set_aside(passed);
  REQUIRE(fs::exists(checkpoint_path(run, 2) + ".other-model"));
  REQUIRE(list_checkpoints(run).size() == 1);
}

TEST_CASE("safetensors: header and data written by hand, read back", "[checkpoint]") {
  auto dir = test_dir("st");
  std::string path = (dir / "model.safetensors").string();
  NamedTensors ts = {{"backbone.embedding.weight", test::random_normal({5, 3}, 1)},
                     {"backbone.layers.0.mixer.D", test::random_normal({7}, 2)}};
  write_safetensors(path, ts, "F32", {{"format", "pt"}});
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  in.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int b = 0; b < 8; ++b) n |= uint64_t(len[b]) << (8 * b);
  REQUIRE((8 + n) % 8 == 0);
  std::string header(n, '\0');
  in.read(header.data(), std::streamsize(n));
  REQUIRE_THAT(header, Contains("\"backbone.embedding.weight\":{\"dtype\":\"F32\",\"shape\":[5,3],\"data_offsets\":[0,60]}"));
  REQUIRE_THAT(header, Contains("\"__metadata__\":{\"format\":\"pt\"}"));
  REQUIRE(fs::file_size(path) == 8 + n + (15 + 7) * 4);
  NamedTensors back = read_safetensors(path);
  REQUIRE(back.size() == 2);
  REQUIRE(back[1].first == "backbone.layers.0.mixer.D");
  REQUIRE(test::bitwise_equal(back[0].second, ts[0].second));
  write_safetensors(path, ts, "BF16");
  back = read_safetensors(path);
  REQUIRE(back[0].second.dtype() == DType::bf16);
  REQUIRE(test::max_abs_difference(back[0].second.to(DType::f32), ts[0].second) < 0.02);
}
