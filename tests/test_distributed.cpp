#include <map>
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
