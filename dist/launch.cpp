#include "dist/launch.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "core/error.h"
#include "dist/process.h"

namespace coil::dist {
namespace {

pid_t start_rank(const LaunchOptions& options, int rank, const std::vector<std::string>& args) {
  ChildOptions child;
  child.env = {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
               "WORLD_SIZE=" + std::to_string(options.nproc), "LOCAL_WORLD_SIZE=" + std::to_string(options.nproc),
               "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(options.master_port)};
  child.env_defaults = {"NCCL_NVLS_ENABLE=0"};
  return start_child(options.program.empty() ? "/proc/self/exe" : options.program, args, child);
}

}  // namespace

int launch_local(const LaunchOptions& options, const std::vector<std::string>& args) {
  COIL_CHECK(options.nproc >= 1, "launch: --nproc {} must be at least 1", options.nproc);
  COIL_CHECK(!args.empty(), "launch: nothing to run; usage: coil launch --nproc N -- train CONFIG");
  std::vector<pid_t> pids;
  for (int r = 0; r < options.nproc; ++r) pids.push_back(start_rank(options, r, args));

  int result = 0;
  size_t running = pids.size();
  bool stopping = false;
  auto stop_time = std::chrono::steady_clock::now();
  while (running > 0) {
    int status = 0;
    pid_t done = waitpid(-1, &status, WNOHANG);
    if (done > 0) {
      for (size_t r = 0; r < pids.size(); ++r) {
        if (pids[r] != done) continue;
        pids[r] = 0;
        running--;
        int code = exit_status(status);
        if (code != 0 && !stopping) {
          std::fprintf(stderr, "launch: rank %zu exited with status %d; stopping the other ranks\n", r, code);
          result = code;
          stopping = true;
          stop_time = std::chrono::steady_clock::now();
          for (pid_t p : pids)
            if (p > 0) kill(p, SIGTERM);
        }
      }
      continue;
    }
    if (stopping && std::chrono::steady_clock::now() - stop_time > std::chrono::duration<double>(options.grace_s))
      for (pid_t p : pids)
        if (p > 0) kill(p, SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return result;
}

}  // namespace coil::dist
