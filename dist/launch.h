// `coil launch --nproc N -- train CONFIG`: starts N local ranks of this same program, each
// with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) set, and
// waits for them. If one rank fails, the others are stopped (SIGTERM, then SIGKILL after a
// grace period) and its exit status is returned.
#pragma once
#include <string>
#include <vector>

namespace coil::dist {

struct LaunchOptions {
  int nproc = 1;
  int master_port = 29500;
  double grace_s = 30;
  std::string program;  // the executable to start; empty = this one (/proc/self/exe)
};

int launch_local(const LaunchOptions& options, const std::vector<std::string>& args);

}  // namespace coil::dist
