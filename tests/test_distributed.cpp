#include <map>
#include <memory>
#include <thread>

#include <unistd.h>

#include "tests/catch.h"
#include "train/distributed.h"

using namespace coil::train;

namespace {
EnvLookup env_of(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}
int free_port_guess(int salt) { return 20000 + (int(::getpid()) * 7 + salt) % 20000; }
}  // namespace

TEST_CASE("launcher environments give rank, world and local rank", "[distributed]") {
  DistEnv single = detect_dist_env(env_of({}));
  REQUIRE(single.world_size == 1);
  REQUIRE(single.rank == 0);
  REQUIRE(single.launcher == "none");

  DistEnv torchrun = detect_dist_env(env_of({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                             {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "29400"}}));
  REQUIRE(torchrun.launcher == "torchrun");
  REQUIRE(torchrun.rank == 3);
  REQUIRE(torchrun.world_size == 8);
  REQUIRE(torchrun.local_rank == 1);
  REQUIRE(torchrun.master_addr == "node7");
  REQUIRE(torchrun.master_port == 29400);

  DistEnv slurm = detect_dist_env(env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "5"},
                                          {"SLURM_JOB_NODELIST", "gpu[03-04],login1"}}));
  REQUIRE(slurm.launcher == "slurm");
  REQUIRE(slurm.rank == 5);
  REQUIRE(slurm.world_size == 16);
  REQUIRE(slurm.local_rank == 5);
  REQUIRE(slurm.master_addr == "gpu03");

  DistEnv mpi = detect_dist_env(env_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                                        {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.1"}}));
  REQUIRE(mpi.launcher == "openmpi");
  REQUIRE(mpi.rank == 1);
  REQUIRE(mpi.world_size == 2);
  REQUIRE(mpi.master_addr == "10.0.0.1");
}

TEST_CASE("Slurm node lists name their first host", "[distributed]") {
  REQUIRE(first_slurm_host("node1") == "node1");
  REQUIRE(first_slurm_host("node1,node2") == "node1");
  REQUIRE(first_slurm_host("gpu[07-12]") == "gpu07");
  REQUIRE(first_slurm_host("gpu[3,5-6]") == "gpu3");
  REQUIRE(first_slurm_host("a[1-2],b[3-4]") == "a1");
}

TEST_CASE("bad launcher variables are errors naming them", "[distributed]") {
  REQUIRE_THROWS_WITH(detect_dist_env(env_of({{"RANK", "4"}, {"WORLD_SIZE", "4"}})),
                      Catch::Matchers::Contains("rank 4 is outside the world of 4 ranks"));
  REQUIRE_THROWS_WITH(detect_dist_env(env_of({{"RANK", "x"}, {"WORLD_SIZE", "4"}})),
                      Catch::Matchers::Contains("RANK='x' is not an integer"));
  REQUIRE_THROWS_WITH(detect_dist_env(env_of({{"MASTER_PORT", "70000"}})),
                      Catch::Matchers::Contains("MASTER_PORT=70000"));
}

TEST_CASE("rank 0 hands its blob to every rank over TCP", "[distributed]") {
  const int world = 4;
  int port = free_port_guess(1);
  std::vector<uint8_t> id(128);
  for (size_t i = 0; i < id.size(); ++i) id[i] = uint8_t(i * 37 + 1);
  std::vector<std::vector<uint8_t>> received(world);
  std::vector<std::string> errors(world);
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      DistEnv env;
      env.rank = r;
      env.world_size = world;
      env.master_port = port;
      try {
        received[size_t(r)] = broadcast_blob_over_tcp(env, r == 0 ? id : std::vector<uint8_t>{}, 20.0);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  for (int r = 0; r < world; ++r) {
    INFO("rank " << r << ": " << errors[size_t(r)]);
    REQUIRE(received[size_t(r)] == id);
  }
}

TEST_CASE("a missing rank makes the rendezvous fail in time, never hang", "[distributed]") {
  DistEnv env;
  env.rank = 0;
  env.world_size = 3;
  env.master_port = free_port_guess(2);
  REQUIRE_THROWS_WITH(broadcast_blob_over_tcp(env, {1, 2, 3}, 0.5),
                      Catch::Matchers::Contains("only 1 of 3 ranks connected"));
  env.rank = 1;
  env.master_port = free_port_guess(3);
  REQUIRE_THROWS_WITH(broadcast_blob_over_tcp(env, {}, 0.5), Catch::Matchers::Contains("could not reach rank 0"));
}

TEST_CASE("gradient buckets fill from the last parameter backwards", "[distributed]") {
  std::vector<Bucket> b = assign_buckets({100, 200, 300, 50, 1000, 10}, 400);
  // Reverse order: 10, 1000 | ... the parameter of 1000 exceeds the cap and stands alone.
  REQUIRE(b.size() == 4);
  REQUIRE(b[0].params == std::vector<size_t>{5});
  REQUIRE(b[1].params == std::vector<size_t>{4});
  REQUIRE(b[2].params == std::vector<size_t>{3, 2});
  REQUIRE(b[3].params == std::vector<size_t>{1, 0});
  size_t total = 0;
  for (auto& bucket : b) total += bucket.bytes;
  REQUIRE(total == 1660);
  REQUIRE(assign_buckets({}, 100).empty());
  REQUIRE(assign_buckets({5, 5, 5}, 1 << 20).size() == 1);
}

#include "autograd/variable.h"
#include "train/grad_reducer.h"

namespace {
using coil::Tensor;
using coil::autograd::Grads;
using coil::autograd::Variable;

// loss = sum_k c_k * sum(p_k), recorded as one custom node: dloss/dp_k = c_k everywhere.
Variable weighted_total(const std::vector<Variable>& params, std::vector<double> coefficients) {
  double total = 0;
  for (size_t k = 0; k < params.size(); ++k)
    for (float v : params[k].value().to_vector<float>()) total += coefficients[k] * v;
  std::vector<Tensor> values;
  for (const Variable& p : params) values.push_back(p.value());
  return coil::autograd::record_fn("weighted_total", params, Tensor::scalar(total),
                                   [values, coefficients](const Grads& g) {
                                     Grads out;
                                     for (size_t k = 0; k < values.size(); ++k)
                                       out.push_back(Tensor::full(values[k].shape(), coefficients[k] * g[0].item()));
                                     return out;
                                   });
}
}  // namespace

TEST_CASE("the reducer binds gradients to bucket buffers and reduces each bucket once", "[distributed]") {
  std::vector<Variable> params;
  for (int64_t n : {3, 5, 2, 7}) params.emplace_back(Tensor::ones({n}), true);
  std::vector<std::vector<float>> reduced;
  GradReducer reducer(params, 8 * sizeof(float), [&](const Tensor& bucket) {
    reduced.push_back(bucket.to_vector<float>());
  });
  // Buckets from the back: {p3 (7)}, {p2, p1}? 2+5 = 7 <= 8 -> {p2, p1}; {p0}.
  REQUIRE(reducer.buckets().size() == 3);
  REQUIRE(reducer.buckets()[1].params == std::vector<size_t>{2, 1});

  // Two micro-steps of accumulation: only the second reduces.
  reducer.set_reduce_this_backward(false);
  weighted_total(params, {1, 2, 3, 4}).backward();
  REQUIRE(reduced.empty());
  reducer.finish_backward();
  reducer.set_reduce_this_backward(true);
  weighted_total(params, {1, 2, 3, 4}).backward();
  REQUIRE(reduced.size() == 3);
  reducer.finish_backward();
  REQUIRE(reduced.size() == 3);
  // Each gradient lives in its bucket: bucket 1 holds p2 (2 x 6) then p1 (5 x 4).
  REQUIRE(reduced[0] == std::vector<float>(7, 8.0f));
  REQUIRE(reduced[1] == std::vector<float>{6, 6, 4, 4, 4, 4, 4});
  REQUIRE(reduced[2] == std::vector<float>(3, 2.0f));
  REQUIRE(params[1].grad().to_vector<float>() == std::vector<float>(5, 4.0f));
  reducer.zero_grads();
  REQUIRE(params[3].grad().to_vector<float>() == std::vector<float>(7, 0.0f));
}

TEST_CASE("buckets whose parameters got no gradient are still reduced, in order", "[distributed]") {
  std::vector<Variable> params;
  for (int64_t n : {4, 4, 4}) params.emplace_back(Tensor::ones({n}), true);
  std::vector<size_t> sizes;
  GradReducer reducer(params, 4 * sizeof(float), [&](const Tensor& b) { sizes.push_back(size_t(b.numel())); });
  REQUIRE(reducer.buckets().size() == 3);
  weighted_total({params[0], params[1]}, {1, 1}).backward();  // the last parameter is unused
  REQUIRE(sizes.empty());  // bucket 0 (the last parameter) is not ready, so none may go first
  reducer.finish_backward();
  REQUIRE(sizes.size() == 3);
}

#include "train/launch.h"

TEST_CASE("launch starts every rank with its environment and reports a failing one", "[distributed]") {
  LaunchOptions options;
  options.nproc = 3;
  options.program = "/bin/sh";
  options.master_port = 29999;
  options.grace_s = 2;
  REQUIRE(launch_local(options, {"-c", "test \"$WORLD_SIZE\" = 3 && test \"$MASTER_PORT\" = 29999 && "
                                        "test \"$RANK\" = \"$LOCAL_RANK\" && test \"$RANK\" -lt 3"}) == 0);
  // Rank 1 fails at once; the others would sleep for a minute but are stopped.
  auto start = std::chrono::steady_clock::now();
  REQUIRE(launch_local(options, {"-c", "if [ \"$RANK\" = 1 ]; then exit 7; fi; sleep 60"}) == 7);
  REQUIRE(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
  REQUIRE_THROWS_WITH(launch_local(options, {}), Catch::Matchers::Contains("nothing to run"));
}

#include <cstdlib>
#include <filesystem>
#include <set>

#include "data/hdf5_util.h"
#include "data/loader.h"
#include "train/checkpoint.h"
#include "train/config.h"
#include "train/trainer.h"

namespace {
coil::data::DataOptions sharded(int rank, int world) {
  coil::data::DataOptions o;
  o.task = "random";
  o.vocab_size = 1000;
  o.seq_len = 12;
  o.seed = 7;
  o.rank = rank;
  o.world_size = world;
  return o;
}
std::vector<int64_t> row(const coil::Tensor& t, int64_t i) {
  const int64_t L = t.size(1);
  const int64_t* p = t.data<int64_t>() + i * L;
  return {p, p + L};
}
}  // namespace

TEST_CASE("ranks draw distinct windows whose union is the single-process stream", "[distributed]") {
  using coil::data::DataLoader;
  const int world = 3;
  const int64_t mb = 2, steps = 4;
  DataLoader single(sharded(0, 1));
  std::vector<DataLoader> ranks;
  for (int r = 0; r < world; ++r) ranks.emplace_back(sharded(r, world));
  std::set<std::vector<int64_t>> seen;
  for (int64_t s = 0; s < steps; ++s) {
    // One step: mb examples per rank, together the next world * mb examples of the stream.
    std::set<std::vector<int64_t>> step_ranks, step_single;
    coil::data::Batch one = single.next_train(world * mb);
    for (int64_t i = 0; i < world * mb; ++i) step_single.insert(row(one.inputs, i));
    for (int r = 0; r < world; ++r) {
      coil::data::Batch b = ranks[size_t(r)].next_train(mb);
      for (int64_t i = 0; i < mb; ++i) {
        // Rank r's i-th draw of the step is example (s * mb + i) * world + r of the stream.
        REQUIRE(row(b.inputs, i) == row(one.inputs, i * world + r));
        REQUIRE(seen.insert(row(b.inputs, i)).second);  // distinct across ranks and steps
        step_ranks.insert(row(b.inputs, i));
      }
    }
    REQUIRE(step_ranks == step_single);
  }
  // The sampler state is one global cursor, the same on every rank and in the single process.
  for (auto& r : ranks) REQUIRE(r.state().examples_drawn == uint64_t(steps * world * mb));
  REQUIRE(single.state().examples_drawn == uint64_t(steps * world * mb));

  // Resuming with the same world continues each rank's stream exactly.
  DataLoader resumed(sharded(1, world));
  resumed.set_state(ranks[0].state());
  REQUIRE(row(resumed.next_train(1).inputs, 0) == row(ranks[1].next_train(1).inputs, 0));
  // Another world size continues the global stream (rounded up to a multiple of the world).
  DataLoader two(sharded(1, 2));
  two.set_state(single.state());  // 24 examples drawn: rank 1 of 2 goes on with example 25
  coil::data::Batch next = single.next_train(2);
  REQUIRE(row(two.next_train(1).inputs, 0) == row(next.inputs, 1));
  DataLoader four(sharded(0, 4));
  four.set_state({7, 26});  // not a multiple of 4: examples 26 and 27 are skipped
  REQUIRE(four.state().examples_drawn == 28);
}

TEST_CASE("distributed config keys: timeout and bucket size, not part of what is computed", "[distributed]") {
  using namespace coil::train;
  Config c = parse_config("train:\n  dist_timeout_s: 30\n  bucket_mb: 4\n", "dist.yaml");
  REQUIRE(c.train.dist_timeout_s == 30);
  REQUIRE(c.train.bucket_mb == 4);
  REQUIRE(Config().train.dist_timeout_s == 300);
  REQUIRE_THROWS_WITH(parse_config("train:\n  dist_timeout_s: 0\n", "dist.yaml"),
                      Catch::Matchers::Contains("train.dist_timeout_s"));
  REQUIRE_THROWS_WITH(parse_config("", "dist.yaml", {"train.bucket_mb=-1"}), Catch::Matchers::Contains("train.bucket_mb"));
  // A run moved to other GPUs or another world size with another timeout is the same run.
  Config d = c;
  apply_override(d, "train.dist_timeout_s=60");
  apply_override(d, "train.bucket_mb=25");
  apply_override(d, "train.device=cuda");
  REQUIRE(config_differences(c, d, true).empty());
  REQUIRE(config_differences(c, d, false).size() == 3);
}

TEST_CASE("checkpoints record the world size; a missing attribute reads as 1", "[distributed]") {
  using namespace coil::train;
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / "coil_test_distributed_ckpt";
  fs::remove_all(dir);
  Checkpoint c;
  c.params.emplace_back("w", coil::Tensor::ones({3}));
  c.state.step = 5;
  c.state.world_size = 4;
  c.state.sampler_examples = 40;
  write_checkpoint((dir / "a.h5").string(), c);
  Checkpoint back = read_checkpoint((dir / "a.h5").string());
  REQUIRE(back.state.world_size == 4);
  REQUIRE(back.state.sampler_examples == 40);
  // A file from before world_size existed: the attribute is absent, and the checksum verifies.
  c.state.world_size = 1;
  write_checkpoint((dir / "b.h5").string(), c);
  {
    coil::h5::Handle f = coil::h5::open_file((dir / "b.h5").string(), true);
    REQUIRE(H5Adelete(f, "world_size") >= 0);
  }
  Checkpoint old = read_checkpoint((dir / "b.h5").string());
  REQUIRE(old.state.world_size == 1);
  REQUIRE(old.state.step == 5);
}

TEST_CASE("several ranks need GPUs: a CPU run with WORLD_SIZE 2 is a clear error", "[distributed]") {
  using namespace coil::train;
  setenv("RANK", "0", 1);
  setenv("WORLD_SIZE", "2", 1);
  Config c = parse_config("", "dist.yaml", {"train.device=cpu", "train.steps=1"});
  TrainOptions o;
  o.quiet = true;
  o.install_signal_handlers = false;
  REQUIRE_THROWS_WITH(run_training(c, o), Catch::Matchers::Contains("each uses the GPU of its local rank") &&
                                              Catch::Matchers::Contains("train.device must be auto or cuda, not cpu"));
  unsetenv("RANK");
  unsetenv("WORLD_SIZE");
}
