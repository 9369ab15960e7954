// Data-parallel training on two GPUs, end to end through the trainer. Each test starts copies of
// this binary as the ranks (launch_local, as `coil launch` does); each copy plays a role
// (tests/roles.h) that reads its run from the environment:
//   COIL_TEST_SETS         config overrides separated by ';'
//   COIL_TEST_STOP_AFTER   stop (with a checkpoint) after this many steps
//   COIL_TEST_RESUME       1: resume the run directory's latest checkpoint
//   COIL_TEST_EXPECT       a message rank 0 must print
//   COIL_TEST_FAULT        kill | hang: what rank 1 does after step 3 (train_fault)
//   COIL_TEST_RANK1_SET    one more override for rank 1 only (train_expect_error)
//   COIL_TEST_EXPECT_ERROR the error every rank must end with (train_expect_error)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "dist/distributed.h"
#include "dist/launch.h"
#include "tests/catch.h"
#include "tests/roles.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

using namespace coil;
using namespace coil::train;
namespace fs = std::filesystem;

namespace {

std::string env_or(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v ? v : fallback;
}

Config config_from_env() {
  std::vector<std::string> sets;
  std::stringstream in(env_or("COIL_TEST_SETS"));
  for (std::string s; std::getline(in, s, ';');)
    if (!s.empty()) sets.push_back(s);
  return parse_config("", "data_parallel.yaml", sets);
}

// A tiny fp32 run on the GPU: 8 steps of 64 tokens (2 sequences of 32), the loss logged at
// every step.
std::vector<std::string> tiny_run(const fs::path& dir, const std::string& preset) {
  return {"run.dir=" + dir.string(), "model.preset=" + preset, "model.d_model=64", "model.n_layer=2",
          "model.vocab_size=32", "model.attention.n_head=1", "data.task=random", "train.seq_len=32",
          "train.micro_batch=1", "train.tokens_per_step=64", "train.steps=8", "train.dtype=f32",
          "train.deterministic=true", "train.dist_timeout_s=60", "optim.lr=3e-3", "optim.warmup=2",
          "eval.every=0", "eval.batches=2", "checkpoint.every=0", "log.every=1"};
}

fs::path fresh_dir(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("coil_test_dp_" + name);
  fs::remove_all(dir);
  return dir;
}

std::string joined(const std::vector<std::string>& sets) {
  std::string out;
  for (auto& s : sets) out += s + ";";
  return out;
}

// Starts `nproc` ranks playing `role` with the given environment; their exit status (the
// first failing rank's). The launcher stops the others `grace_s` after a rank fails.
int run_ranks(const char* role, int nproc, int port, const std::map<std::string, std::string>& vars,
              double grace_s = 5) {
  for (auto& [k, v] : vars) setenv(k.c_str(), v.c_str(), 1);
  setenv("COIL_TEST_ROLE", role, 1);
  dist::LaunchOptions options;
  options.nproc = nproc;
  options.master_port = port;
  options.grace_s = grace_s;
  int code = dist::launch_local(options, {"--role"});
  unsetenv("COIL_TEST_ROLE");
  for (auto& [k, v] : vars) unsetenv(k.c_str());
  return code;
}

// The training losses metrics.jsonl logged, by step.
std::map<int64_t, double> logged_losses(const fs::path& run_dir) {
  std::map<int64_t, double> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto loss = line.find(",\"loss\":");
    if (line.rfind("{\"step\":", 0) != 0 || loss == std::string::npos) continue;
    out[std::atoll(line.c_str() + 8)] = std::atof(line.c_str() + loss + 8);
  }
  return out;
}

double max_relative_difference(const std::map<int64_t, double>& a, const std::map<int64_t, double>& b) {
  double worst = 0;
  for (auto& [step, v] : a) worst = std::max(worst, std::abs(v - b.at(step)) / std::max(1.0, std::abs(v)));
  return worst;
}

}  // namespace

COIL_TEST_ROLE_DEFINE(train_run) {
  TrainOptions o;
  o.quiet = false;
  o.install_signal_handlers = false;
  o.resume = env_or("COIL_TEST_RESUME") == "1";
  o.stop_after_steps = std::atoll(env_or("COIL_TEST_STOP_AFTER", "-1").c_str());
  std::vector<std::string> messages;
  o.print = [&](const std::string& s) {
    std::fprintf(stderr, "%s\n", s.c_str());
    messages.push_back(s);
  };
  run_training(config_from_env(), o);
  std::string expect = env_or("COIL_TEST_EXPECT");
  if (expect.empty() || dist::detect_dist_env().rank != 0) return 0;
  for (auto& m : messages)
    if (m.find(expect) != std::string::npos) return 0;
  std::fprintf(stderr, "rank 0 never printed '%s'\n", expect.c_str());
  return 6;
}

// Every rank must fail with COIL_TEST_EXPECT_ERROR (an inconsistent launch), within
// train.dist_timeout_s plus a margin for the start.
COIL_TEST_ROLE_DEFINE(train_expect_error) {
  Config c = config_from_env();
  if (dist::detect_dist_env().rank == 1 && !env_or("COIL_TEST_RANK1_SET").empty())
    apply_override(c, env_or("COIL_TEST_RANK1_SET"));
  TrainOptions o;
  o.quiet = true;
  o.install_signal_handlers = false;
  auto start = std::chrono::steady_clock::now();
  try {
    run_training(c, o);
  } catch (const Error& e) {
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "rank %d ended after %.1f s with: %s\n", dist::detect_dist_env().rank, waited, e.what());
    bool expected = std::string(e.what()).find(env_or("COIL_TEST_EXPECT_ERROR")) != std::string::npos;
    return expected && waited < c.train.dist_timeout_s + 10 ? 0 : 7;
  }
  return 8;  // trained although the launch was inconsistent
}

// Rank 1 is killed (SIGKILL) or hangs after step 3; rank 0 must fail with an error within
// train.dist_timeout_s of its next wait, and the checkpoint of step 2 must stay intact. Rank 0
// ignores the launcher's SIGTERM, so that only its watchdog can end it, and writes what
// happened to <run_dir>/rank0_outcome.txt ("ok" or what went wrong).
COIL_TEST_ROLE_DEFINE(train_fault) {
  Config c = config_from_env();
  const dist::DistEnv env = dist::detect_dist_env();
  const bool hang = env_or("COIL_TEST_FAULT") == "hang";
  if (env.rank == 0) std::signal(SIGTERM, SIG_IGN);
  TrainOptions o;
  o.quiet = true;
  o.install_signal_handlers = false;
  auto after_step3 = std::chrono::steady_clock::now();
  o.on_step = [&](int64_t step, double) {
    if (step != 3) return;
    after_step3 = std::chrono::steady_clock::now();
    if (env.rank != 1) return;
    if (!hang) std::raise(SIGKILL);
    std::this_thread::sleep_for(std::chrono::duration<double>(3 * c.train.dist_timeout_s));
    std::_Exit(0);
  };
  std::string outcome = "training finished without its peer";
  try {
    run_training(c, o);
  } catch (const Error& e) {
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - after_step3).count();
    std::fprintf(stderr, "rank %d ended after %.1f s with: %s\n", env.rank, waited, e.what());
    Checkpoint latest;
    if (waited > c.train.dist_timeout_s + 15)
      outcome = fmt::format("the error came after {:.1f} s", waited);
    else if (!load_latest(c.run_dir(), latest) || latest.state.step != 2)
      outcome = "the checkpoint of step 2 does not load";
    else
      outcome = "ok";
  }
  std::ofstream(fs::path(c.run_dir()) / "rank0_outcome.txt") << outcome;
  return 0;
}

TEST_CASE("2 ranks x 1 sequence reproduce 1 rank x 2 accumulated sequences", "[cuda][multigpu]") {
  // The same 2 examples per step in the same grouping (rank r's micro-batch is the one rank's
  // micro-step r), fp32, train.deterministic (the scan's backward without atomics). The
  // average of 2 ranks equals the 1-rank sum of the 0.5-weighted gradients (scaling by 0.5 is
  // exact), so the weights agree (asserted within 1e-6 absolute; expected equal) and the
  // losses differ only by the rounding of the logged mean (f32 on 1 rank, f64 over ranks):
  // asserted within 1e-5 relative.
  int port = 29621;
  for (std::string preset : {"transformer++-tiny", "mamba-tiny"}) {
    INFO(preset);
    fs::path one = fresh_dir("one_" + preset), two = fresh_dir("two_" + preset);
    REQUIRE(run_ranks("train_run", 1, port++, {{"COIL_TEST_SETS", joined(tiny_run(one, preset))}}) == 0);
    REQUIRE(run_ranks("train_run", 2, port++, {{"COIL_TEST_SETS", joined(tiny_run(two, preset))}}) == 0);
    auto a = logged_losses(one), b = logged_losses(two);
    REQUIRE(a.size() == 8);
    REQUIRE(b.size() == 8);
    double diff = max_relative_difference(a, b);
    INFO("largest relative difference of the logged losses: " << diff);
    CHECK(diff <= 1e-5);
    Checkpoint ca = read_checkpoint(list_checkpoints(one.string()).back());
    Checkpoint cb = read_checkpoint(list_checkpoints(two.string()).back());
    REQUIRE(cb.state.world_size == 2);
    REQUIRE(cb.state.sampler_examples == ca.state.sampler_examples);  // the global cursor: 16
    REQUIRE(ca.state.sampler_examples == 16);
    REQUIRE(cb.state.tokens_seen == ca.state.tokens_seen);
    double worst = 0;  // the final weights, deterministic kernels: expected equal
    REQUIRE(ca.params.size() == cb.params.size());
    for (size_t i = 0; i < ca.params.size(); ++i) {
      auto x = ca.params[i].second.to_vector<float>(), y = cb.params[i].second.to_vector<float>();
      for (size_t k = 0; k < x.size(); ++k) worst = std::max(worst, double(std::abs(x[k] - y[k])));
    }
    INFO("largest absolute difference of the final weights: " << worst);
    CHECK(worst <= 1e-6);
  }
}

TEST_CASE("2 ranks stop and resume exactly; another world size continues with a note", "[cuda][multigpu]") {
  fs::path whole = fresh_dir("whole"), parts = fresh_dir("parts"), other = fresh_dir("other_world");
  REQUIRE(run_ranks("train_run", 2, 29631, {{"COIL_TEST_SETS", joined(tiny_run(whole, "transformer++-tiny"))}}) == 0);
  auto sets = tiny_run(parts, "transformer++-tiny");
  REQUIRE(run_ranks("train_run", 2, 29632, {{"COIL_TEST_SETS", joined(sets)}, {"COIL_TEST_STOP_AFTER", "3"}}) == 0);
  REQUIRE(fs::path(list_checkpoints(parts.string()).back()).filename() == "step_00000003.h5");
  fs::copy(parts, other, fs::copy_options::recursive);
  REQUIRE(run_ranks("train_run", 2, 29633, {{"COIL_TEST_SETS", joined(sets)}, {"COIL_TEST_RESUME", "1"}}) == 0);
  auto a = logged_losses(whole), b = logged_losses(parts);
  REQUIRE(a.size() == 8);
  REQUIRE(b.size() == 8);
  for (auto& [step, loss] : a) {
    INFO("step " << step);
    REQUIRE(b.at(step) == loss);  // bitwise: the same ranks see the same data and weights
  }
  // One rank continues the 2-rank checkpoint: same parameters and optimizer state, new data split.
  auto other_sets = tiny_run(other, "transformer++-tiny");
  REQUIRE(run_ranks("train_run", 1, 29634,
                    {{"COIL_TEST_SETS", joined(other_sets)},
                     {"COIL_TEST_RESUME", "1"},
                     {"COIL_TEST_EXPECT", "the data order changes"}}) == 0);
  REQUIRE(logged_losses(other).size() == 8);
  REQUIRE(read_checkpoint(list_checkpoints(other.string()).back()).state.world_size == 1);
}

TEST_CASE("a rank that is killed or hangs makes the other exit with an error in time", "[cuda][multigpu]") {
  int port = 29641;
  for (std::string fault : {"kill", "hang"}) {
    INFO(fault);
    fs::path dir = fresh_dir("fault_" + fault);
    auto sets = tiny_run(dir, "transformer++-tiny");
    sets.push_back("train.dist_timeout_s=8");
    sets.push_back("checkpoint.every=2");
    auto start = std::chrono::steady_clock::now();
    int code = run_ranks("train_fault", 2, port++, {{"COIL_TEST_SETS", joined(sets)}, {"COIL_TEST_FAULT", fault}}, 90);
    REQUIRE(code == (fault == "kill" ? 128 + SIGKILL : 0));  // the launcher reports the killed rank
    std::ifstream in(dir / "rank0_outcome.txt");
    std::string outcome((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    REQUIRE(outcome == "ok");
    REQUIRE(std::chrono::steady_clock::now() - start < std::chrono::seconds(120));
  }
}

namespace {
// The whole optimizer state of a run's last checkpoint, by name.
std::map<std::string, std::vector<float>> tensors_of(const NamedTensors& named) {
  std::map<std::string, std::vector<float>> out;
  for (auto& [name, t] : named)
    if (t.dtype() == DType::f32) out[name] = t.to_vector<float>();
  return out;
}

// The largest relative error |a - b| / |b| (2-norms) over the tensors of a and b: each tensor
// compared as a whole, as "within 1e-6 relative" means for weights and moments (an element near
// zero would make an element-wise ratio measure f32 rounding, not the update).
double max_relative_difference(const std::map<std::string, std::vector<float>>& a,
                               const std::map<std::string, std::vector<float>>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (auto& [name, x] : a) {
    const std::vector<float>& y = b.at(name);
    REQUIRE(x.size() == y.size());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      diff += (double(x[i]) - double(y[i])) * (double(x[i]) - double(y[i]));
      norm += double(y[i]) * double(y[i]);
    }
    worst = std::max(worst, std::sqrt(diff) / std::max(std::sqrt(norm), 1e-30));
  }
  return worst;
}
}  // namespace

TEST_CASE("ZeRO-1 equals the unsharded run: losses, weights and moments; its checkpoint resumes on one rank",
          "[cuda][multigpu]") {
  // Mamba, fp32 and bf16 compute, deterministic, small buckets (several buckets, shards that
  // cut parameters). The sharded update is the unsharded one element for element; only the
  // clipping norm is summed in another order (asserted within 1e-6 relative; expected equal).
  int port = 29651;
  for (std::string dtype : {"f32", "bf16"}) {
    INFO(dtype);
    fs::path plain = fresh_dir("zero0_" + dtype), sharded = fresh_dir("zero1_" + dtype);
    auto run = [&](const fs::path& dir, int zero) {
      auto sets = tiny_run(dir, "mamba-tiny");
      sets.insert(sets.end(), {"train.dtype=" + dtype, "train.bucket_mb=0.01", "train.zero=" + std::to_string(zero),
                               "optim.grad_clip=0.5"});
      return run_ranks("train_run", 2, port++, {{"COIL_TEST_SETS", joined(sets)}});
    };
    REQUIRE(run(plain, 0) == 0);
    REQUIRE(run(sharded, 1) == 0);
    auto a = logged_losses(plain), b = logged_losses(sharded);
    REQUIRE(a.size() == 8);
    double loss_diff = max_relative_difference(a, b);
    INFO("largest relative difference of the logged losses: " << loss_diff);
    CHECK(loss_diff <= 1e-6);
    Checkpoint ca = read_checkpoint(list_checkpoints(plain.string()).back());
    Checkpoint cb = read_checkpoint(list_checkpoints(sharded.string()).back());
    double weights = max_relative_difference(tensors_of(ca.params), tensors_of(cb.params));
    double moments = max_relative_difference(tensors_of(ca.optimizer), tensors_of(cb.optimizer));
    INFO("weights " << weights << ", moments " << moments);
    CHECK(weights <= 1e-6);
    CHECK(moments <= 1e-6);
  }
  // A ZeRO-1 run stopped after 3 steps continues on one rank without ZeRO.
  fs::path dir = fresh_dir("zero_resume");
  auto sets = tiny_run(dir, "mamba-tiny");
  sets.push_back("train.zero=1");
  REQUIRE(run_ranks("train_run", 2, port++, {{"COIL_TEST_SETS", joined(sets)}, {"COIL_TEST_STOP_AFTER", "3"}}) == 0);
  sets.back() = "train.zero=0";
  REQUIRE(run_ranks("train_run", 1, port++,
                    {{"COIL_TEST_SETS", joined(sets)}, {"COIL_TEST_RESUME", "1"},
                     {"COIL_TEST_EXPECT", "the data order changes"}}) == 0);
  REQUIRE(logged_losses(dir).size() == 8);
}

TEST_CASE("an inconsistent launch fails on every rank with one clear error", "[cuda][multigpu]") {
  fs::path dir = fresh_dir("inconsistent");
  auto sets = tiny_run(dir, "transformer++-tiny");
  sets.push_back("train.dist_timeout_s=20");
  REQUIRE(run_ranks("train_expect_error", 2, 29661,
                    {{"COIL_TEST_SETS", joined(sets)},
                     {"COIL_TEST_RANK1_SET", "optim.lr=1e-3"},
                     {"COIL_TEST_EXPECT_ERROR", "rank 1 resolved another config than rank 0"}}) == 0);
  REQUIRE(run_ranks("train_expect_error", 2, 29662,
                    {{"COIL_TEST_SETS", joined(sets)},
                     {"CUDA_VISIBLE_DEVICES", "0"},
                     {"COIL_TEST_EXPECT_ERROR", "both use GPU"}}) == 0);
}
