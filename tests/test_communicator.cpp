// Two ranks on two GPUs: the test starts two copies of this binary through launch_local, each
// playing a role (tests/roles.h).
#include <chrono>
#include <cstdlib>

#include "core/cuda.h"
#include "dist/communicator.h"
#include "dist/launch.h"
#include "tests/catch.h"
#include "tests/roles.h"

using namespace coil;
using namespace coil::dist;

namespace {
int run_ranks(const char* role, int port) {
  setenv("COIL_TEST_ROLE", role, 1);
  LaunchOptions options;
  options.nproc = 2;
  options.master_port = port;
  options.grace_s = 5;
  int code = launch_local(options, {"--role"});
  unsetenv("COIL_TEST_ROLE");
  return code;
}

}  // namespace

// Each rank contributes rank+1 everywhere; the average is 1.5 on both. Then ZeRO-1's pair:
// reduce-scatter (rank r's shard r becomes the mean of the shards r) and all-gather (shard r
// of every rank becomes rank r's).
COIL_TEST_ROLE_DEFINE(allreduce) {
  DistEnv env = detect_dist_env();
  cuda::set_device(env.local_rank);
  Communicator comm(env, 60);
  Tensor t = Tensor::full({1000003}, env.rank + 1.0, DType::f32, Device::cuda(env.local_rank));
  comm.all_reduce_mean_async(t);
  comm.join_compute_stream();
  comm.wait("the all-reduce");
  for (float v : t.to_vector<float>())
    if (v != 1.5f) return 3;
  const int64_t shard = 1000;  // element i of rank r: r * 10 + i / shard (its shard's index)
  std::vector<float> mine(2 * shard);
  for (int64_t i = 0; i < 2 * shard; ++i) mine[size_t(i)] = float(env.rank * 10 + i / shard);
  Tensor s = Tensor::from_vector(mine, {2 * shard}).to(Device::cuda(env.local_rank));
  comm.reduce_scatter_mean_async(s);
  comm.join_compute_stream();
  comm.wait("the reduce-scatter");
  std::vector<float> got = s.to_vector<float>();
  for (int64_t i = env.rank * shard; i < (env.rank + 1) * shard; ++i)
    if (got[size_t(i)] != float(5 + env.rank)) return 4;  // (0 + 10) / 2 + shard index
  comm.all_gather_async(s);
  comm.join_compute_stream();
  comm.wait("the all-gather");
  got = s.to_vector<float>();
  for (int64_t i = 0; i < 2 * shard; ++i)
    if (got[size_t(i)] != float(5 + i / shard)) return 5;
  comm.barrier("the final barrier");
  return 0;
}

// Rank 1 dies before the collective; rank 0 must end with the watchdog's error in time.
COIL_TEST_ROLE_DEFINE(dead_peer) {
  DistEnv env = detect_dist_env();
  cuda::set_device(env.local_rank);
  Communicator comm(env, 8);
  if (env.rank == 1) std::_Exit(0);
  Tensor t = Tensor::ones({1024}, DType::f32, Device::cuda(env.local_rank));
  auto start = std::chrono::steady_clock::now();
  try {
    comm.all_reduce_mean_async(t);
    comm.wait("the all-reduce");
  } catch (const Error& e) {
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "rank 0 ended as expected after %.1f s: %s\n", waited, e.what());
    return waited < 30 ? 0 : 4;
  }
  return 5;  // the collective completed without its peer: impossible
}

TEST_CASE("two ranks average a tensor over NCCL", "[cuda][multigpu]") {
  REQUIRE(run_ranks("allreduce", 29611) == 0);
}

TEST_CASE("a dead rank makes the other fail with an error, not hang", "[cuda][multigpu]") {
  REQUIRE(run_ranks("dead_peer", 29612) == 0);
}
