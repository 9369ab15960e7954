// Data parallelism: who this process is, and how gradients are grouped.
//
// Rank, world size and local rank come from the launcher's environment (docs/DISTRIBUTED.md
// has the table), looked up in this order, the first that is present winning:
//   RANK, WORLD_SIZE    torchrun and `coil launch` (LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
//                       MASTER_PORT; torchrun adds TORCHELASTIC_*: with
//                       TORCHELASTIC_USE_AGENT_STORE=True its agent's TCPStore holds
//                       MASTER_ADDR:MASTER_PORT and the ranks meet through it)
//   OMPI_COMM_WORLD_*   OpenMPI's mpirun (RANK, SIZE, LOCAL_RANK, LOCAL_SIZE); the master is
//                       MASTER_ADDR, required when the ranks span several nodes
//   SLURM_PROCID        Slurm's srun, in a job step (SLURM_STEP_NUM_TASKS or SLURM_NTASKS,
//                       SLURM_LOCALID); the master is MASTER_ADDR, else the first host of
//                       SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST, SLURM_NODELIST); the port
//                       MASTER_PORT, else 29500 + SLURM_JOB_ID mod 1000. A batch script that
//                       runs coil without srun has SLURM_PROCID but no step: one process.
// An incomplete or inconsistent environment (WORLD_SIZE without RANK, a rank outside the
// world, a multi-node world without MASTER_ADDR) is an error naming the variables.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace coil::dist {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 0;  // ranks on this node; 0 where the launcher does not say
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string launcher = "none";  // torchrun, RANK/WORLD_SIZE, openmpi, slurm, none
  // torchrun's agent holds a TCPStore on MASTER_ADDR:MASTER_PORT: the ranks are its clients,
  // under keys that start with store_prefix (this run and restart attempt).
  bool agent_store = false;
  std::string store_prefix;
  std::string note;  // something the user should know (printed by rank 0), or empty
};

using EnvLookup = std::function<const char*(const char*)>;

DistEnv detect_dist_env(const EnvLookup& getenv_fn);
DistEnv detect_dist_env();

// The first host of a Slurm host list in its compressed form: "gpu[03-05,9],cpu1" -> "gpu03",
// "rack[2-3]-node[07-08]" -> "rack2-node07". A malformed list is an error naming it.
std::string first_slurm_host(const std::string& hostlist);

// The GPU a rank uses: its local rank among the GPUs it sees; when it sees exactly one (the
// launcher gave each rank its own through CUDA_VISIBLE_DEVICES), that one. A local rank past
// the visible GPUs otherwise is an error naming both counts.
int choose_gpu(int local_rank, int visible_gpus, const std::string& launcher);

// Gradient buckets. Parameters are given in registration order; backward produces their
// gradients roughly in reverse, so buckets are filled from the last parameter backwards:
// bucket 0 holds the last parameters and is reduced first. A bucket closes once adding the
// next parameter would pass bucket_bytes (a parameter larger than that gets its own bucket).
struct Bucket {
  std::vector<size_t> params;  // indices into the parameter list
  size_t bytes = 0;
};
std::vector<Bucket> assign_buckets(const std::vector<size_t>& param_bytes, size_t bucket_bytes);

}  // namespace coil::dist
