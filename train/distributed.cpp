#include "train/distributed.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace coil::train {
namespace {

int parse_int(const char* name, const char* value) {
  char* end = nullptr;
  long v = std::strtol(value, &end, 10);
  COIL_CHECK(end != value && *end == '\0', "environment variable {}='{}' is not an integer", name, value);
  return int(v);
}

// Reads an integer variable; `fallback` if it is unset.
int env_int(const EnvLookup& getenv_fn, const char* name, int fallback) {
  const char* v = getenv_fn(name);
  return v ? parse_int(name, v) : fallback;
}

}  // namespace

std::string first_slurm_host(const std::string& nodelist) {
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == ',' && depth == 0) break;
    if (c == '[') depth++;
    if (c == ']') depth--;
    first += c;
  }
  size_t open = first.find('[');
  if (open == std::string::npos) return first;
  std::string range = first.substr(open + 1, first.find(']') - open - 1);
  range = range.substr(0, range.find(','));
  range = range.substr(0, range.find('-'));
  return first.substr(0, open) + range;
}

DistEnv detect_dist_env(const EnvLookup& getenv_fn) {
  DistEnv env;
  if (getenv_fn("RANK") && getenv_fn("WORLD_SIZE")) {
    env.launcher = "torchrun";
    env.rank = env_int(getenv_fn, "RANK", 0);
    env.world_size = env_int(getenv_fn, "WORLD_SIZE", 1);
    env.local_rank = env_int(getenv_fn, "LOCAL_RANK", env.rank);
  } else if (getenv_fn("OMPI_COMM_WORLD_RANK")) {
    env.launcher = "openmpi";
    env.rank = env_int(getenv_fn, "OMPI_COMM_WORLD_RANK", 0);
    env.world_size = env_int(getenv_fn, "OMPI_COMM_WORLD_SIZE", 1);
    env.local_rank = env_int(getenv_fn, "OMPI_COMM_WORLD_LOCAL_RANK", env.rank);
  } else if (getenv_fn("SLURM_PROCID") && getenv_fn("SLURM_NTASKS")) {
    env.launcher = "slurm";
    env.rank = env_int(getenv_fn, "SLURM_PROCID", 0);
    env.world_size = env_int(getenv_fn, "SLURM_NTASKS", 1);
    env.local_rank = env_int(getenv_fn, "SLURM_LOCALID", 0);
    const char* nodes = getenv_fn("SLURM_JOB_NODELIST");
    if (!nodes) nodes = getenv_fn("SLURM_NODELIST");
    if (nodes) env.master_addr = first_slurm_host(nodes);
  }
  if (const char* addr = getenv_fn("MASTER_ADDR")) env.master_addr = addr;
  env.master_port = env_int(getenv_fn, "MASTER_PORT", env.master_port);
  COIL_CHECK(env.world_size >= 1, "{}: world size {} must be at least 1", env.launcher, env.world_size);
  COIL_CHECK(env.rank >= 0 && env.rank < env.world_size, "{}: rank {} is outside the world of {} ranks",
             env.launcher, env.rank, env.world_size);
  COIL_CHECK(env.local_rank >= 0, "{}: local rank {} is negative", env.launcher, env.local_rank);
  COIL_CHECK(env.master_port > 0 && env.master_port < 65536, "MASTER_PORT={} is not a TCP port",
             env.master_port);
  return env;
}

DistEnv detect_dist_env() {
  return detect_dist_env([](const char* name) { return std::getenv(name); });
}

namespace {

using Clock = std::chrono::steady_clock;

// Sends or receives exactly n bytes; false if the peer went away.
bool send_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    p += k, n -= size_t(k);
  }
  return true;
}

bool recv_all(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n) {
    ssize_t k = ::recv(fd, p, n, 0);
    if (k <= 0) return false;
    p += k, n -= size_t(k);
  }
  return true;
}

void set_timeout(int fd, double seconds) {
  timeval tv{long(seconds), long((seconds - long(seconds)) * 1e6)};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

std::vector<uint8_t> serve_blob(const DistEnv& env, const std::vector<uint8_t>& blob, double timeout_s) {
  int server = ::socket(AF_INET, SOCK_STREAM, 0);
  COIL_CHECK(server >= 0, "rendezvous: socket(): {}", std::strerror(errno));
  int one = 1;
  setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(uint16_t(env.master_port));
  if (::bind(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(server, 128) != 0) {
    std::string why = std::strerror(errno);
    ::close(server);
    fail("rendezvous: rank 0 cannot listen on port {} (MASTER_PORT): {}", env.master_port, why);
  }
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  uint64_t size = blob.size();
  for (int served = 1; served < env.world_size; ++served) {
    double left = std::chrono::duration<double>(deadline - Clock::now()).count();
    timeval tv{long(std::max(left, 0.0)), 0};
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(server, &fds);
    if (left <= 0 || ::select(server + 1, &fds, nullptr, nullptr, &tv) <= 0) {
      ::close(server);
      fail("rendezvous: rank 0 waited {:.0f} s on port {} but only {} of {} ranks connected",
           timeout_s, env.master_port, served, env.world_size);
    }
    int peer = ::accept(server, nullptr, nullptr);
    if (peer < 0) continue;
    set_timeout(peer, timeout_s);
    bool ok = send_all(peer, &size, sizeof size) && send_all(peer, blob.data(), blob.size());
    ::close(peer);
    if (!ok) --served;
  }
  ::close(server);
  return blob;
}

std::vector<uint8_t> fetch_blob(const DistEnv& env, double timeout_s) {
  auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  std::string port = std::to_string(env.master_port);
  while (true) {
    if (getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &found) == 0) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      bool connected = fd >= 0 && ::connect(fd, found->ai_addr, found->ai_addrlen) == 0;
      freeaddrinfo(found);
      if (connected) {
        set_timeout(fd, timeout_s);
        uint64_t size = 0;
        std::vector<uint8_t> blob;
        bool ok = recv_all(fd, &size, sizeof size) && size < (1u << 20);
        if (ok) {
          blob.resize(size);
          ok = recv_all(fd, blob.data(), size);
        }
        ::close(fd);
        if (ok) return blob;
      } else if (fd >= 0) {
        ::close(fd);
      }
    }
    if (Clock::now() > deadline)
      fail("rendezvous: rank {} could not reach rank 0 at {}:{} within {:.0f} s (MASTER_ADDR/MASTER_PORT)",
           env.rank, env.master_addr, env.master_port, timeout_s);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

std::vector<uint8_t> broadcast_blob_over_tcp(const DistEnv& env, const std::vector<uint8_t>& blob,
                                             double timeout_s) {
  if (env.world_size == 1) return blob;
  return env.rank == 0 ? serve_blob(env, blob, timeout_s) : fetch_blob(env, timeout_s);
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

}  // namespace coil::train
