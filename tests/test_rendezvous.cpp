// The ranks' rendezvous with real sockets on 127.0.0.1, and the client of torchrun's TCPStore
// against a small server written here from PyTorch 2.x's wire format (dist/tcp_store.h; the
// real store is exercised by scripts/launchers_check.sh, which runs torchrun on the GPU
// machine: Debian's python3-torch is 1.13, whose store speaks an older protocol).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "dist/net.h"
#include "dist/rendezvous.h"
#include "dist/tcp_store.h"
#include "tests/catch.h"

using namespace coil;
using namespace coil::dist;

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// A port nothing listens on right now (the kernel's choice of an ephemeral one).
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// A TCPStore server after PyTorch 2.x's wire format (the queries coil uses): a connection must
// start with VALIDATE and the magic, else it is closed; SET, GET, ADD, CHECK, WAIT (answered
// once the keys exist, or cancelled by CANCEL_WAIT).
class FakeTorchStore {
 public:
  FakeTorchStore() : port_(free_port()) {
    std::string why;
    server_ = net::listen_on(port_, why);
    REQUIRE(server_.valid());
    accept_thread_ = std::thread([this] { accept_loop(); });
  }
  ~FakeTorchStore() {
    stop_ = true;
    accept_thread_.join();
    for (auto& t : clients_) t.join();
  }
  int port() const { return port_; }
  int rejected() const { return rejected_; }
  std::string value(const std::string& key) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = data_.find(key);
    return it == data_.end() ? "" : std::string(it->second.begin(), it->second.end());
  }

 private:
  void accept_loop() {
    while (!stop_) {
      pollfd p{server_.fd(), POLLIN, 0};
      if (::poll(&p, 1, 10) <= 0) continue;
      for (net::Socket s; (s = net::accept_from(server_)).valid();)
        clients_.emplace_back([this, owned = std::make_shared<net::Socket>(std::move(s))] { serve(*owned); });
    }
  }
  // Reads exactly n bytes, polling so that the server can stop; false once the client left.
  bool read(int fd, void* out, size_t n) {
    while (!stop_) {
      if (net::recv_all(fd, out, n, net::deadline_after(0.05))) return true;
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 0) > 0) {  // readable but nothing came: closed
        char c;
        if (::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0) return false;
      }
    }
    return false;
  }
  template <class T>
  bool read_le(int fd, T& v) {
    uint8_t b[sizeof(T)];
    if (!read(fd, b, sizeof b)) return false;
    v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= T(b[i]) << (8 * i);
    return true;
  }
  bool read_bytes(int fd, std::vector<uint8_t>& v) {
    uint64_t n = 0;
    if (!read_le(fd, n) || n > (1u << 20)) return false;
    v.resize(n);
    return n == 0 || read(fd, v.data(), n);
  }
  bool read_string(int fd, std::string& s) {
    std::vector<uint8_t> v;
    if (!read_bytes(fd, v)) return false;
    s.assign(v.begin(), v.end());
    return true;
  }
  void send(int fd, const net::Writer& w) {
    net::send_all(fd, w.data().data(), w.data().size(), net::deadline_after(1));
  }
  bool all_exist(const std::vector<std::string>& keys) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& k : keys)
      if (!data_.count(k)) return false;
    return true;
  }
  bool read_keys(int fd, std::vector<std::string>& keys) {
    uint64_t n = 0;
    if (!read_le(fd, n) || n > 1000) return false;
    keys.resize(n);
    for (auto& k : keys)
      if (!read_string(fd, k)) return false;
    return true;
  }

  void serve(const net::Socket& socket) {
    const int fd = socket.fd();
    uint8_t query = 0;
    uint32_t magic = 0;
    if (!read_le(fd, query) || query != 0 || !read_le(fd, magic) || magic != 0x3C85F7CE) {
      rejected_++;
      return;  // closes the connection, as PyTorch's store does
    }
    while (read_le(fd, query)) {
      std::string key;
      std::vector<uint8_t> value;
      std::vector<std::string> keys;
      net::Writer answer;
      if (query == 1) {  // SET
        if (!read_string(fd, key) || !read_bytes(fd, value)) return;
        std::lock_guard<std::mutex> lock(mutex_);
        data_[key] = value;
      } else if (query == 3) {  // GET
        if (!read_string(fd, key)) return;
        std::lock_guard<std::mutex> lock(mutex_);
        answer.bytes(data_.at(key));
      } else if (query == 4) {  // ADD
        int64_t delta = 0;
        if (!read_string(fd, key) || !read_le(fd, delta)) return;
        std::lock_guard<std::mutex> lock(mutex_);
        auto& v = data_[key];
        int64_t now = (v.empty() ? 0 : std::stoll(std::string(v.begin(), v.end()))) + delta;
        std::string text = std::to_string(now);
        v.assign(text.begin(), text.end());
        answer.i64(now);
      } else if (query == 5) {  // CHECK
        if (!read_keys(fd, keys)) return;
        answer.u8(all_exist(keys) ? 0 : 1);
      } else if (query == 6) {  // WAIT: STOP_WAITING once all exist, or WAIT_CANCELED on CANCEL_WAIT
        if (!read_keys(fd, keys)) return;
        while (!stop_) {
          if (all_exist(keys)) {
            answer.u8(0);
            break;
          }
          pollfd p{fd, POLLIN, 0};
          if (::poll(&p, 1, 5) > 0) {
            uint8_t cancel = 0;
            if (!read_le(fd, cancel) || cancel != 12) return;
            answer.u8(1);
            break;
          }
        }
      } else {
        return;
      }
      if (!answer.data().empty()) send(fd, answer);
    }
  }

  int port_;
  net::Socket server_;
  std::atomic<bool> stop_{false};
  std::atomic<int> rejected_{0};
  std::thread accept_thread_;
  std::vector<std::thread> clients_;
  std::mutex mutex_;
  std::map<std::string, std::vector<uint8_t>> data_;
};

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }

Hello hello_of(int rank, int world, uint64_t hash = 42, const std::string& device = "") {
  Hello h;
  h.rank = rank;
  h.world_size = world;
  h.local_rank = rank;
  h.config_hash = hash;
  h.host = "testhost";
  h.device = device.empty() ? "GPU-" + std::to_string(rank) : device;
  return h;
}

struct Outcome {
  std::vector<uint8_t> blob;
  std::string error;
};

// Runs the ranks' rendezvous in threads; each hello from `hellos` (rank 0's first).
std::vector<Outcome> meet(const DistEnv& base, const std::vector<Hello>& hellos, const std::vector<uint8_t>& blob,
                          double timeout_s) {
  std::vector<Outcome> out(hellos.size());
  std::vector<std::thread> ranks;
  for (size_t i = 0; i < hellos.size(); ++i)
    ranks.emplace_back([&, i] {
      DistEnv env = base;
      env.rank = hellos[i].rank;
      try {
        out[i].blob = rendezvous(env, hellos[i], env.rank == 0 ? blob : std::vector<uint8_t>{}, timeout_s);
      } catch (const std::exception& e) {
        out[i].error = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  return out;
}

DistEnv world_env(int world, int port) {
  DistEnv env;
  env.world_size = world;
  env.master_port = port;
  return env;
}

}  // namespace

TEST_CASE("hellos encode and decode; garbage and truncation are told apart", "[rendezvous]") {
  Hello h = hello_of(3, 8, 0x1234567890abcdefull, "GPU-abc");
  std::vector<uint8_t> data = encode_hello(h);
  Hello back;
  size_t used = 0;
  std::string why;
  REQUIRE(decode_hello(data, back, used, why) == ParseResult::ok);
  REQUIRE(used == data.size());
  REQUIRE(back.rank == 3);
  REQUIRE(back.world_size == 8);
  REQUIRE(back.config_hash == 0x1234567890abcdefull);
  REQUIRE(back.host == "testhost");
  REQUIRE(back.device == "GPU-abc");
  for (size_t n = 0; n < data.size(); ++n)
    REQUIRE(decode_hello({data.begin(), data.begin() + long(n)}, back, used, why) == ParseResult::need_more);
  REQUIRE(decode_hello(bytes("GET / HTTP/1.1\r\n"), back, used, why) == ParseResult::invalid);
  REQUIRE_THAT(why, Catch::Matchers::Contains("not coil's magic"));
}

TEST_CASE("rank 0's check of the hellos names what is inconsistent", "[rendezvous]") {
  REQUIRE(check_hellos({hello_of(0, 3), hello_of(1, 3), hello_of(2, 3)}, 3).empty());
  REQUIRE_THAT(check_hellos({hello_of(0, 3), hello_of(1, 3), hello_of(1, 3)}, 3),
               Catch::Matchers::Contains("rank 1 joined twice"));
  REQUIRE_THAT(check_hellos({hello_of(0, 3), hello_of(1, 3), hello_of(2, 3, 7)}, 3),
               Catch::Matchers::Contains("rank 2 resolved another config than rank 0"));
  REQUIRE_THAT(check_hellos({hello_of(0, 3), hello_of(1, 3), hello_of(2, 4)}, 3),
               Catch::Matchers::Contains("started as rank 2 of 4 ranks, rank 0 as one of 3"));
  REQUIRE_THAT(check_hellos({hello_of(0, 2, 42, "GPU-x"), hello_of(1, 2, 42, "GPU-x")}, 2),
               Catch::Matchers::Contains("ranks 0 and 1 both use GPU GPU-x on host testhost"));
  Hello other = hello_of(1, 2);
  other.version = 9;
  REQUIRE_THAT(check_hellos({hello_of(0, 2), other}, 2), Catch::Matchers::Contains("same coil build"));
  Hello cpu0 = hello_of(0, 2, 42, ""), cpu1 = hello_of(1, 2, 42, "");
  cpu0.device = cpu1.device = "";  // no GPU identity: nothing to compare
  REQUIRE(check_hellos({cpu0, cpu1}, 2).empty());
}

TEST_CASE("rank 0 hands its blob to every rank over TCP", "[rendezvous]") {
  std::vector<uint8_t> id(128);
  for (size_t i = 0; i < id.size(); ++i) id[i] = uint8_t(i * 37 + 1);
  auto out = meet(world_env(4, free_port()), {hello_of(0, 4), hello_of(1, 4), hello_of(2, 4), hello_of(3, 4)}, id, 20);
  for (size_t r = 0; r < out.size(); ++r) {
    INFO("rank " << r << ": " << out[r].error);
    REQUIRE(out[r].blob == id);
  }
}

TEST_CASE("stray connections are dropped and the real ranks still join", "[rendezvous]") {
  const int port = free_port();
  std::vector<uint8_t> id = bytes("the nccl id");
  Outcome root, one;
  std::thread rank0([&] {
    try {
      root.blob = rendezvous(world_env(2, port), hello_of(0, 2), id, 20);
    } catch (const std::exception& e) {
      root.error = e.what();
    }
  });
  // A port scanner's garbage, a hello with coil's magic but a broken name, and a client that
  // never speaks: rank 0 closes the first two and is not held up by the third.
  std::string why;
  net::Deadline soon = net::deadline_after(10);
  net::Socket garbage, broken, silent;
  while (!(garbage = net::connect_to("127.0.0.1", port, soon, why)).valid()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  REQUIRE(net::send_all(garbage.fd(), http.data(), http.size(), soon));
  broken = net::connect_to("127.0.0.1", port, soon, why);
  std::vector<uint8_t> bad = encode_hello(hello_of(1, 2));
  bad[28] = 0xff, bad[29] = 0xff;  // the host name's length (after 28 bytes of header): 65535 > 255
  REQUIRE(net::send_all(broken.fd(), bad.data(), bad.size(), soon));
  silent = net::connect_to("127.0.0.1", port, soon, why);
  for (net::Socket* s : {&garbage, &broken}) {
    uint8_t c;
    REQUIRE_FALSE(net::recv_all(s->fd(), &c, 1, net::deadline_after(5)));  // closed by rank 0
  }
  try {
    DistEnv env = world_env(2, port);
    env.rank = 1;
    one.blob = rendezvous(env, hello_of(1, 2), {}, 20);
  } catch (const std::exception& e) {
    one.error = e.what();
  }
  rank0.join();
  INFO(root.error << " / " << one.error);
  REQUIRE(root.blob == id);
  REQUIRE(one.blob == id);
}

TEST_CASE("an inconsistent launch is one clear error on every rank", "[rendezvous]") {
  SECTION("a rank with another config") {
    auto out = meet(world_env(3, free_port()), {hello_of(0, 3), hello_of(1, 3), hello_of(2, 3, 99)}, bytes("id"), 20);
    for (auto& o : out) REQUIRE_THAT(o.error, Catch::Matchers::Contains("rank 2 resolved another config"));
  }
  SECTION("two ranks on one GPU") {
    auto out = meet(world_env(2, free_port()), {hello_of(0, 2, 42, "GPU-same"), hello_of(1, 2, 42, "GPU-same")},
                    bytes("id"), 20);
    for (auto& o : out) REQUIRE_THAT(o.error, Catch::Matchers::Contains("both use GPU GPU-same"));
  }
  SECTION("ranks that disagree on the world size") {
    auto out = meet(world_env(2, free_port()), {hello_of(0, 2), hello_of(1, 3)}, bytes("id"), 20);
    for (auto& o : out) REQUIRE_THAT(o.error, Catch::Matchers::Contains("world sizes disagree"));
  }
}

TEST_CASE("a missing rank or a missing rank 0 ends the rendezvous at its deadline, in milliseconds", "[rendezvous]") {
  // Rank 0 gives up on the missing rank at 90% of the timeout and tells the others why.
  auto start = Clock::now();
  auto out = meet(world_env(3, free_port()), {hello_of(0, 3), hello_of(2, 3)}, bytes("id"), 0.5);
  double waited = since(start);
  REQUIRE_THAT(out[0].error, Catch::Matchers::Contains("only 2 of 3 ranks joined (missing: rank 1)"));
  REQUIRE_THAT(out[1].error, Catch::Matchers::Contains("only 2 of 3 ranks joined (missing: rank 1)"));
  REQUIRE_THAT(out[0].error, Catch::Matchers::Contains("waited 0.45 s (train.dist_timeout_s 0.5 s)"));
  CHECK(waited >= 0.45);
  CHECK(waited < 0.5 + 0.5);

  start = Clock::now();
  DistEnv env = world_env(2, free_port());
  env.rank = 1;
  REQUIRE_THROWS_WITH(rendezvous(env, hello_of(1, 2), {}, 0.3), Catch::Matchers::Contains("could not reach rank 0"));
  waited = since(start);
  CHECK(waited >= 0.3);
  CHECK(waited < 1.3);
}

TEST_CASE("the TCPStore client speaks PyTorch's protocol", "[rendezvous]") {
  FakeTorchStore store;
  net::Deadline deadline = net::deadline_after(10);
  TcpStoreClient a("127.0.0.1", store.port(), deadline), b("127.0.0.1", store.port(), deadline);
  REQUIRE(a.add("counter", 1, deadline) == 1);
  REQUIRE(b.add("counter", 5, deadline) == 6);
  REQUIRE(store.value("counter") == "6");  // stored as decimal text, as PyTorch does
  REQUIRE_FALSE(a.check({"k"}, deadline));
  std::thread setter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    b.set("k", bytes("value"), deadline);
  });
  REQUIRE(a.get("k", deadline) == bytes("value"));  // waits for the key
  setter.join();
  REQUIRE(a.check({"k", "counter"}, deadline));
  REQUIRE(store.rejected() == 0);

  // A wait that times out is cancelled, and the connection stays usable.
  auto start = Clock::now();
  REQUIRE_THROWS_WITH(a.wait({"never"}, net::deadline_after(0.2)), Catch::Matchers::Contains("'never' timed out"));
  CHECK(since(start) >= 0.2);
  REQUIRE(a.add("counter", 0, deadline) == 6);

  // Nothing listening: an error naming the address, at the deadline.
  start = Clock::now();
  int closed = free_port();
  REQUIRE_THROWS_WITH(TcpStoreClient("127.0.0.1", closed, net::deadline_after(0.2)),
                      Catch::Matchers::Contains("cannot be reached"));
  CHECK(since(start) >= 0.2);
}

TEST_CASE("under torchrun the ranks meet through its store, and rank 0 does not listen", "[rendezvous]") {
  FakeTorchStore store;
  DistEnv env = world_env(3, store.port());
  env.agent_store = true;
  env.store_prefix = "coil/run/attempt_0/";
  auto out = meet(env, {hello_of(0, 3), hello_of(1, 3), hello_of(2, 3)}, bytes("nccl id"), 20);
  for (auto& o : out) {
    INFO(o.error);
    REQUIRE(o.blob == bytes("nccl id"));
  }
  REQUIRE(store.value("coil/run/attempt_0/joined") == "3");

  env.store_prefix = "coil/run/attempt_1/";  // a restart: fresh keys
  out = meet(env, {hello_of(0, 3), hello_of(1, 3), hello_of(1, 3)}, bytes("nccl id"), 20);
  for (auto& o : out) REQUIRE_THAT(o.error, Catch::Matchers::Contains("rank 1 joined twice"));

  env.store_prefix = "coil/run/attempt_2/";
  auto start = Clock::now();
  out = meet(env, {hello_of(0, 3), hello_of(1, 3)}, bytes("nccl id"), 0.5);
  REQUIRE_THAT(out[0].error, Catch::Matchers::Contains("only 2 of 3 ranks joined (missing: rank 2)"));
  REQUIRE_THAT(out[1].error, Catch::Matchers::Contains("missing: rank 2"));
  CHECK(since(start) >= 0.45);
  CHECK(since(start) < 1.0);
}
