#include "dist/distributed.h"

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

namespace coil::dist {
namespace {

int parse_int(const char* name, const char* value) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(value, &end, 10);
  COIL_CHECK(end != value && *end == '\0' && errno == 0 && v >= INT32_MIN && v <= INT32_MAX,
             "environment variable {}='{}' is not an integer", name, value);
  return int(v);
}

// Reads an integer variable; `fallback` if it is unset.
int env_int(const EnvLookup& getenv_fn, const char* name, int fallback) {
  const char* v = getenv_fn(name);
  return v ? parse_int(name, v) : fallback;
}

// Both variables of a pair or neither: one alone is an incomplete launcher environment.
bool both_or_neither(const EnvLookup& getenv_fn, const char* a, const char* b, const char* who) {
  bool has_a = getenv_fn(a) != nullptr, has_b = getenv_fn(b) != nullptr;
  if (has_a != has_b)
    fail("{} is set but {} is not: {} sets both; set both or neither", has_a ? a : b, has_a ? b : a, who);
  return has_a;
}

}  // namespace

std::string first_slurm_host(const std::string& hostlist) {
  auto bad = [&](const char* why) -> std::string {
    fail("Slurm host list '{}' is malformed: {}", hostlist, why);
  };
  std::string host;
  size_t i = 0;
  while (i < hostlist.size() && hostlist[i] != ',') {
    if (hostlist[i] == ']') bad("']' without '['");
    if (hostlist[i] != '[') {
      host += hostlist[i++];
      continue;
    }
    size_t close = hostlist.find(']', i);
    if (close == std::string::npos) bad("'[' without ']'");
    std::string ranges = hostlist.substr(i + 1, close - i - 1);
    std::string first = ranges.substr(0, ranges.find_first_of(",-"));
    if (first.empty() || ranges.find('[') != std::string::npos) bad("a bracket holds no number");
    for (char c : first)
      if (!std::isdigit(static_cast<unsigned char>(c))) bad("a range is not made of numbers");
    host += first;
    i = close + 1;
  }
  if (host.empty()) bad("no host");
  return host;
}

DistEnv detect_dist_env(const EnvLookup& getenv_fn) {
  DistEnv env;
  auto get = [&](const char* name) -> std::string {
    const char* v = getenv_fn(name);
    return v ? v : "";
  };
  bool multi_node_needs_master = false;
  if (both_or_neither(getenv_fn, "RANK", "WORLD_SIZE", "torchrun (or coil launch)")) {
    env.launcher = getenv_fn("TORCHELASTIC_RUN_ID") ? "torchrun" : "RANK/WORLD_SIZE";
    env.rank = env_int(getenv_fn, "RANK", 0);
    env.world_size = env_int(getenv_fn, "WORLD_SIZE", 1);
    env.local_rank = env_int(getenv_fn, "LOCAL_RANK", env.rank);
    env.local_world_size = env_int(getenv_fn, "LOCAL_WORLD_SIZE", 0);
    if (get("TORCHELASTIC_USE_AGENT_STORE") == "True") {
      COIL_CHECK(getenv_fn("MASTER_ADDR") && getenv_fn("MASTER_PORT"),
                 "torchrun: TORCHELASTIC_USE_AGENT_STORE=True but MASTER_ADDR or MASTER_PORT is not set: the "
                 "agent's store cannot be found");
      env.agent_store = true;
      env.store_prefix = fmt::format("coil/{}/attempt_{}/", get("TORCHELASTIC_RUN_ID"),
                                     env_int(getenv_fn, "TORCHELASTIC_RESTART_COUNT", 0));
    }
    multi_node_needs_master = true;
  } else if (both_or_neither(getenv_fn, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "mpirun")) {
    env.launcher = "openmpi";
    env.rank = env_int(getenv_fn, "OMPI_COMM_WORLD_RANK", 0);
    env.world_size = env_int(getenv_fn, "OMPI_COMM_WORLD_SIZE", 1);
    env.local_rank = env_int(getenv_fn, "OMPI_COMM_WORLD_LOCAL_RANK", env.rank);
    env.local_world_size = env_int(getenv_fn, "OMPI_COMM_WORLD_LOCAL_SIZE", 0);
    multi_node_needs_master = true;
  } else if (getenv_fn("SLURM_PROCID") && getenv_fn("SLURM_STEP_NUM_TASKS")) {
    env.launcher = "slurm";
    env.rank = env_int(getenv_fn, "SLURM_PROCID", 0);
    env.world_size = env_int(getenv_fn, "SLURM_STEP_NUM_TASKS", 1);
    const char* ntasks = getenv_fn("SLURM_NTASKS");
    COIL_CHECK(!ntasks || parse_int("SLURM_NTASKS", ntasks) == env.world_size,
               "slurm: SLURM_STEP_NUM_TASKS={} and SLURM_NTASKS={} disagree", env.world_size, ntasks);
    env.local_rank = env_int(getenv_fn, "SLURM_LOCALID", 0);
    for (const char* list : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"})
      if (getenv_fn(list)) {
        env.master_addr = first_slurm_host(get(list));
        break;
      }
    if (getenv_fn("SLURM_JOB_ID")) env.master_port = 29500 + env_int(getenv_fn, "SLURM_JOB_ID", 0) % 1000;
  } else if (getenv_fn("SLURM_PROCID") && env_int(getenv_fn, "SLURM_NTASKS", 1) > 1) {
    env.note = fmt::format(
        "a Slurm job of {} tasks, but this is no srun step (SLURM_STEP_NUM_TASKS is not set): training as one "
        "process; run `srun coil train ...` in the batch script to start one rank per task",
        get("SLURM_NTASKS"));
  }
  if (const char* addr = getenv_fn("MASTER_ADDR")) env.master_addr = addr;
  env.master_port = env_int(getenv_fn, "MASTER_PORT", env.master_port);
  COIL_CHECK(env.world_size >= 1, "{}: world size {} must be at least 1", env.launcher, env.world_size);
  COIL_CHECK(env.rank >= 0 && env.rank < env.world_size, "{}: rank {} is outside the world of {} ranks",
             env.launcher, env.rank, env.world_size);
  COIL_CHECK(env.local_rank >= 0, "{}: local rank {} is negative", env.launcher, env.local_rank);
  COIL_CHECK(
      env.local_world_size == 0 || (env.local_world_size <= env.world_size && env.local_rank < env.local_world_size),
      "{}: local rank {} of {} local ranks in a world of {} is inconsistent", env.launcher, env.local_rank,
      env.local_world_size, env.world_size);
  COIL_CHECK(!multi_node_needs_master || getenv_fn("MASTER_ADDR") || env.local_world_size == 0 ||
                 env.local_world_size == env.world_size,
             "{}: the {} ranks span several nodes ({} on this one) but MASTER_ADDR is not set: set it to the host of "
             "rank 0 (and MASTER_PORT to a free port there){}",
             env.launcher, env.world_size, env.local_world_size,
             env.launcher == "openmpi" ? ", e.g. mpirun -x MASTER_ADDR=node1 -x MASTER_PORT=29500" : "");
  COIL_CHECK(env.master_port > 0 && env.master_port < 65536, "MASTER_PORT={} is not a TCP port", env.master_port);
  return env;
}

DistEnv detect_dist_env() {
  return detect_dist_env([](const char* name) { return std::getenv(name); });
}

int choose_gpu(int local_rank, int visible_gpus, const std::string& launcher) {
  COIL_CHECK(visible_gpus > 0, "{}: this rank sees no GPU", launcher);
  if (local_rank < visible_gpus) return local_rank;
  if (visible_gpus == 1) return 0;
  fail("{}: this rank has local rank {} but sees {} GPUs (CUDA_VISIBLE_DEVICES): start at most one rank per GPU",
       launcher, local_rank, visible_gpus);
}

std::vector<Bucket> assign_buckets(const std::vector<size_t>& param_bytes, size_t bucket_bytes) {
  std::vector<Bucket> buckets;
  for (size_t k = param_bytes.size(); k-- > 0;) {
    if (buckets.empty() || (buckets.back().bytes > 0 && buckets.back().bytes + param_bytes[k] > bucket_bytes))
      buckets.emplace_back();
    buckets.back().params.push_back(k);
    buckets.back().bytes += param_bytes[k];
  }
  return buckets;
}

}  // namespace coil::dist
