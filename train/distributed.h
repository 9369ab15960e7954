// Data parallelism: who this process is, how ranks meet, and how gradients are grouped.
//
// Rank, world size and local rank come from the launcher's environment: torchrun (RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), Slurm srun (SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID; the master is MASTER_ADDR or the first host of SLURM_JOB_NODELIST), OpenMPI
// mpirun (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK). Rank 0
// hands a blob (the NCCL unique id) to every other rank over TCP at MASTER_ADDR:MASTER_PORT.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace coil::train {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // torchrun, slurm, openmpi, none
};

using EnvLookup = std::function<const char*(const char*)>;

// Reads the launcher's variables; a single process when none are set. Inconsistent values
// (rank outside the world, a port that is no number) raise an error naming the variable.
DistEnv detect_dist_env(const EnvLookup& getenv_fn);
DistEnv detect_dist_env();

// The first host of a Slurm node list: "gpu[03-05,9],cpu1" -> "gpu03".
std::string first_slurm_host(const std::string& nodelist);

// Rank 0 sends `blob` to the other ranks; every rank returns it. Rank 0 listens on
// master_port and waits for world_size-1 connections; other ranks retry connecting until
// timeout_s. A peer that does not appear in time is an error naming the address and the wait.
std::vector<uint8_t> broadcast_blob_over_tcp(const DistEnv& env, const std::vector<uint8_t>& blob,
                                             double timeout_s);

// Gradient buckets. Parameters are given in registration order; backward produces their
// gradients roughly in reverse, so buckets are filled from the last parameter backwards:
// bucket 0 holds the last parameters and is reduced first. A bucket closes once adding the
// next parameter would pass bucket_bytes (a parameter larger than that gets its own bucket).
struct Bucket {
  std::vector<size_t> params;  // indices into the parameter list
  size_t bytes = 0;
};
std::vector<Bucket> assign_buckets(const std::vector<size_t>& param_bytes, size_t bucket_bytes);

}  // namespace coil::train
