#include <map>
#include <memory>
#include <thread>

#include "dist/distributed.h"
#include "tests/catch.h"

using namespace coil::dist;

namespace {
EnvLookup env_of(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}
}  // namespace

TEST_CASE("launcher environments give rank, world and local rank", "[distributed]") {
  DistEnv single = detect_dist_env(env_of({}));
  REQUIRE(single.world_size == 1);
  REQUIRE(single.rank == 0);
  REQUIRE(single.launcher == "none");
  REQUIRE_FALSE(single.agent_store);

  // coil launch (and RANK/WORLD_SIZE set by hand)
  DistEnv plain = detect_dist_env(env_of({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                          {"MASTER_ADDR", "node7"}, {"MASTER_PORT", "29400"}}));
  REQUIRE(plain.launcher == "RANK/WORLD_SIZE");
  REQUIRE(plain.rank == 3);
  REQUIRE(plain.world_size == 8);
  REQUIRE(plain.local_rank == 1);
  REQUIRE(plain.master_addr == "node7");
  REQUIRE(plain.master_port == 29400);
  REQUIRE_FALSE(plain.agent_store);

  // torchrun --standalone / --nnodes 2: the agent's store holds MASTER_PORT
  DistEnv torchrun = detect_dist_env(env_of({{"RANK", "2"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "0"},
                                             {"LOCAL_WORLD_SIZE", "2"}, {"GROUP_RANK", "1"},
                                             {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "41234"},
                                             {"TORCHELASTIC_RUN_ID", "job7"}, {"TORCHELASTIC_RESTART_COUNT", "2"},
                                             {"TORCHELASTIC_USE_AGENT_STORE", "True"}}));
  REQUIRE(torchrun.launcher == "torchrun");
  REQUIRE(torchrun.rank == 2);
  REQUIRE(torchrun.local_rank == 0);
  REQUIRE(torchrun.local_world_size == 2);
  REQUIRE(torchrun.agent_store);
  REQUIRE(torchrun.store_prefix == "coil/job7/attempt_2/");
  REQUIRE(torchrun.master_addr == "node1");
  REQUIRE(torchrun.master_port == 41234);
  // An agent without a shared store: rank 0 listens on the port torchrun chose.
  DistEnv own = detect_dist_env(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "0"},
                                        {"LOCAL_WORLD_SIZE", "1"}, {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "41234"},
                                        {"TORCHELASTIC_RUN_ID", "job7"}, {"TORCHELASTIC_USE_AGENT_STORE", "False"}}));
  REQUIRE(own.launcher == "torchrun");
  REQUIRE_FALSE(own.agent_store);

  // srun: the step's tasks; the master is the first host of the step's node list
  DistEnv slurm = detect_dist_env(env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_STEP_NUM_TASKS", "16"},
                                          {"SLURM_LOCALID", "5"}, {"SLURM_JOB_ID", "123456"},
                                          {"SLURM_STEP_NODELIST", "gpu[03-04],login1"},
                                          {"SLURM_JOB_NODELIST", "gpu[01-04],login1"}}));
  REQUIRE(slurm.launcher == "slurm");
  REQUIRE(slurm.rank == 5);
  REQUIRE(slurm.world_size == 16);
  REQUIRE(slurm.local_rank == 5);
  REQUIRE(slurm.master_addr == "gpu03");
  REQUIRE(slurm.master_port == 29500 + 456);  // two jobs sharing a node do not collide
  DistEnv slurm_set = detect_dist_env(env_of({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "2"},
                                              {"SLURM_JOB_NODELIST", "a1"}, {"MASTER_ADDR", "10.0.0.9"},
                                              {"MASTER_PORT", "31000"}}));
  REQUIRE(slurm_set.master_addr == "10.0.0.9");
  REQUIRE(slurm_set.master_port == 31000);
  // A batch script without srun has SLURM_PROCID but no step: one process, with a note.
  DistEnv batch = detect_dist_env(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "0"}}));
  REQUIRE(batch.world_size == 1);
  REQUIRE(batch.launcher == "none");
  REQUIRE_THAT(batch.note, Catch::Matchers::Contains("no srun step"));

  // mpirun
  DistEnv mpi = detect_dist_env(env_of({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                                        {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}));
  REQUIRE(mpi.launcher == "openmpi");
  REQUIRE(mpi.rank == 1);
  REQUIRE(mpi.world_size == 2);
  REQUIRE(mpi.local_rank == 1);
  REQUIRE(mpi.master_addr == "127.0.0.1");  // one node: the default master is this machine

  // torchrun inside a Slurm allocation: the innermost launcher (torchrun) wins.
  DistEnv nested = detect_dist_env(env_of({{"RANK", "1"},
                                           {"WORLD_SIZE", "2"},
                                           {"LOCAL_RANK", "1"},
                                           {"MASTER_ADDR", "h"},
                                           {"SLURM_PROCID", "0"},
                                           {"SLURM_STEP_NUM_TASKS", "1"}}));
  REQUIRE(nested.launcher == "RANK/WORLD_SIZE");
  REQUIRE(nested.rank == 1);
}

TEST_CASE("Slurm host lists name their first host", "[distributed]") {
  REQUIRE(first_slurm_host("node1") == "node1");
  REQUIRE(first_slurm_host("node1,node2") == "node1");
  REQUIRE(first_slurm_host("gpu[07-12]") == "gpu07");
  REQUIRE(first_slurm_host("gpu[3,5-6]") == "gpu3");
  REQUIRE(first_slurm_host("a[1-2],b[3-4]") == "a1");
  REQUIRE(first_slurm_host("gpu[003-005,9],cpu1") == "gpu003");
  REQUIRE(first_slurm_host("rack[2-3]-node[07-08]") == "rack2-node07");
  REQUIRE(first_slurm_host("nid[00042]") == "nid00042");
  REQUIRE(first_slurm_host("login-1.cluster") == "login-1.cluster");
  for (const char* bad : {"gpu[1-2", "gpu]1[", "gpu[]", "gpu[a-b]", "", ",node2"})
    REQUIRE_THROWS_WITH(first_slurm_host(bad), Catch::Matchers::Contains("Slurm host list") &&
                                                   Catch::Matchers::Contains("malformed"));
}

TEST_CASE("bad launcher variables are errors naming them", "[distributed]") {
  auto fails = [](std::map<std::string, std::string> vars, const std::string& message) {
    INFO(message);
    REQUIRE_THROWS_WITH(detect_dist_env(env_of(std::move(vars))), Catch::Matchers::Contains(message));
  };
  fails({{"RANK", "4"}, {"WORLD_SIZE", "4"}}, "rank 4 is outside the world of 4 ranks");
  fails({{"RANK", "x"}, {"WORLD_SIZE", "4"}}, "RANK='x' is not an integer");
  fails({{"RANK", "1"}, {"WORLD_SIZE", "99999999999"}}, "WORLD_SIZE='99999999999' is not an integer");
  fails({{"MASTER_PORT", "70000"}}, "MASTER_PORT=70000");
  fails({{"WORLD_SIZE", "2"}}, "WORLD_SIZE is set but RANK is not");
  fails({{"RANK", "0"}}, "RANK is set but WORLD_SIZE is not");
  fails({{"OMPI_COMM_WORLD_SIZE", "2"}}, "OMPI_COMM_WORLD_SIZE is set but OMPI_COMM_WORLD_RANK is not");
  fails({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"}},
        "local rank 2 of 2 local ranks");
  fails({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"MASTER_PORT", "1234"}},
        "TORCHELASTIC_USE_AGENT_STORE=True but MASTER_ADDR or MASTER_PORT is not set");
  // Ranks on several nodes need to be told where rank 0 is.
  fails({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
         {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}},
        "span several nodes (2 on this one) but MASTER_ADDR is not set");
  fails({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_NTASKS", "8"}},
        "SLURM_STEP_NUM_TASKS=4 and SLURM_NTASKS=8 disagree");
  fails({{"SLURM_PROCID", "0"}, {"SLURM_STEP_NUM_TASKS", "2"}, {"SLURM_STEP_NODELIST", "gpu[1-"}}, "malformed");
}

TEST_CASE("each rank picks its GPU: its local rank, or the one GPU it was given", "[distributed]") {
  REQUIRE(choose_gpu(0, 8, "torchrun") == 0);
  REQUIRE(choose_gpu(5, 8, "torchrun") == 5);
  REQUIRE(choose_gpu(3, 1, "slurm") == 0);  // srun --gpus-per-task=1: each task sees its own
  REQUIRE_THROWS_WITH(choose_gpu(2, 2, "openmpi"), Catch::Matchers::Contains("local rank 2 but sees 2 GPUs"));
  REQUIRE_THROWS_WITH(choose_gpu(0, 0, "slurm"), Catch::Matchers::Contains("sees no GPU"));
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
#include "dist/grad_reducer.h"

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

#include "dist/launch.h"

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
#include "train/info.h"
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

TEST_CASE("distributed config keys: timeout, bucket size and ZeRO-1, not part of what is computed", "[distributed]") {
  using namespace coil::train;
  Config c = parse_config("train:\n  dist_timeout_s: 30\n  bucket_mb: 4\n", "dist.yaml");
  REQUIRE(c.train.dist_timeout_s == 30);
  REQUIRE(c.train.bucket_mb == 4);
  REQUIRE(Config().train.dist_timeout_s == 300);
  REQUIRE_THROWS_WITH(parse_config("train:\n  dist_timeout_s: 0\n", "dist.yaml"),
                      Catch::Matchers::Contains("train.dist_timeout_s"));
  REQUIRE_THROWS_WITH(parse_config("", "dist.yaml", {"train.bucket_mb=-1"}), Catch::Matchers::Contains("train.bucket_mb"));
  REQUIRE(Config().train.zero == 0);
  REQUIRE(parse_config("train:\n  zero: 1\n", "dist.yaml").train.zero == 1);
  REQUIRE_THROWS_WITH(parse_config("train:\n  zero: 2\n", "dist.yaml"),
                      Catch::Matchers::Contains("dist.yaml:2: train.zero") && Catch::Matchers::Contains("[0, 1]"));
  // A run moved to other GPUs or another world size, with another timeout or with ZeRO-1, is
  // the same run.
  Config d = c;
  apply_override(d, "train.dist_timeout_s=60");
  apply_override(d, "train.bucket_mb=25");
  apply_override(d, "train.device=cuda");
  apply_override(d, "train.zero=1");
  REQUIRE(config_differences(c, d, true).empty());
  REQUIRE(config_differences(c, d, false).size() == 4);
}

TEST_CASE("coil info: ZeRO-1 divides the moments a rank holds by the world size", "[distributed]") {
  using namespace coil::train;
  Config c = parse_config("model: {preset: mamba-130m}\ntrain: {dtype: bf16}\n", "info.yaml");
  ModelInfo whole = model_info(c, 2);
  REQUIRE(whole.optimizer_bytes == 8.0 * double(whole.parameters));
  apply_override(c, "train.zero=1");
  ModelInfo sharded = model_info(c, 4);
  REQUIRE(sharded.optimizer_bytes == 2.0 * double(sharded.parameters));
  REQUIRE(sharded.weights_bytes == whole.weights_bytes);  // the fp32 weights stay whole
  REQUIRE_THAT(format_info(c, sharded), Catch::Matchers::Contains("(ZeRO-1: 1/4 of the moments)"));
  REQUIRE(model_info(c, 1).optimizer_bytes == whole.optimizer_bytes);  // one rank keeps them whole
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
