#include "dist/rendezvous.h"

#include <poll.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <thread>

#include "core/error.h"
#include "dist/net.h"
#include "dist/tcp_store.h"

namespace coil::dist {
namespace {

constexpr size_t kMaxName = 255;
constexpr size_t kMaxVerdict = 1 << 20;
constexpr uint32_t kOk = 0, kError = 1;

std::vector<uint8_t> encode_verdict(uint32_t status, const std::vector<uint8_t>& payload) {
  net::Writer w;
  w.u32(kRendezvousMagic).u32(status).u32(uint32_t(payload.size())).raw(payload.data(), payload.size());
  return w.data();
}

std::vector<uint8_t> verdict_of(const std::string& error, const std::vector<uint8_t>& blob) {
  return error.empty() ? encode_verdict(kOk, blob) : encode_verdict(kError, {error.begin(), error.end()});
}

// A verdict read back: the blob, or the error raised on this rank.
std::vector<uint8_t> accept_verdict(const std::vector<uint8_t>& data, int rank, const std::string& from) {
  net::Reader r(data.data(), data.size());
  uint32_t magic = 0, status = 0, n = 0;
  std::vector<uint8_t> payload;
  bool ok = r.u32(magic) && magic == kRendezvousMagic && r.u32(status) && r.u32(n) && n <= kMaxVerdict;
  if (ok) {
    payload.resize(n);
    ok = r.raw(payload.data(), n);
  }
  COIL_CHECK(ok, "rendezvous: rank {} got an answer from {} that is not coil's rank 0 (is MASTER_PORT another "
                 "service's?)",
             rank, from);
  if (status != kOk) fail("rendezvous: rank 0 ended the run: {}", std::string(payload.begin(), payload.end()));
  return payload;
}

std::string rank_list(const std::vector<int>& ranks) {
  std::string out;
  for (int r : ranks) out += (out.empty() ? "" : ", ") + std::to_string(r);
  return out;
}

// Ranks of the world that no hello names.
std::vector<int> missing_ranks(const std::vector<Hello>& hellos, int world_size) {
  std::vector<bool> seen(size_t(world_size), false);
  for (const Hello& h : hellos)
    if (h.rank >= 0 && h.rank < world_size) seen[size_t(h.rank)] = true;
  std::vector<int> out;
  for (int r = 0; r < world_size; ++r)
    if (!seen[size_t(r)]) out.push_back(r);
  return out;
}

// Rank 0 gives up on missing ranks a little before the others' deadline (a tenth of the
// timeout, at most 2 s), so that its verdict, which names them, reaches the ranks that wait.
double hello_wait_s(double timeout_s) { return timeout_s - std::min(0.1 * timeout_s, 2.0); }

std::string timeout_error(const std::vector<Hello>& hellos, int world_size, double timeout_s, const std::string& where,
                          int strays) {
  return fmt::format(
      "rank 0 waited {:.3g} s (train.dist_timeout_s {:.3g} s) at {}, but only {} of {} ranks joined (missing: rank "
      "{}){}: a rank did not start, died, or cannot reach rank 0 (MASTER_ADDR/MASTER_PORT)",
      hello_wait_s(timeout_s), timeout_s, where, hellos.size(), world_size,
      rank_list(missing_ranks(hellos, world_size)),
      strays ? fmt::format("; {} connection(s) that were no coil rank were ignored", strays) : "");
}

// ---- coil's own server on MASTER_PORT ----

struct Peer {
  net::Socket socket;
  std::vector<uint8_t> received;
  Hello hello;
};

std::vector<uint8_t> serve(const DistEnv& env, const Hello& own, const std::vector<uint8_t>& blob, double timeout_s) {
  const net::Deadline deadline = net::deadline_after(hello_wait_s(timeout_s));
  std::string why;
  net::Socket server = net::listen_on(env.master_port, why);
  if (!server.valid())
    fail("rendezvous: rank 0 cannot listen on port {} (MASTER_PORT): {}; another run or service holds it: choose "
         "another MASTER_PORT (coil launch --port)",
         env.master_port, why);
  std::vector<Peer> waiting, joined;  // connected without / with a hello
  int strays = 0;
  const size_t kMaxWaiting = 64 + 4 * size_t(env.world_size);
  while (int(joined.size()) < env.world_size - 1) {
    std::vector<pollfd> fds{{server.fd(), POLLIN, 0}};
    for (auto* list : {&waiting, &joined})
      for (Peer& p : *list) fds.push_back({p.socket.fd(), POLLIN, 0});
    double left = net::seconds_left(deadline);
    if (left <= 0) break;
    if (::poll(fds.data(), fds.size(), int(std::ceil(left * 1000))) <= 0) continue;
    if (fds[0].revents)
      for (net::Socket s; (s = net::accept_from(server)).valid();) {
        if (waiting.size() >= kMaxWaiting) {
          strays++;
          continue;
        }
        waiting.push_back({std::move(s), {}, {}});
      }
    // A joined rank that went away may connect again; a waiting connection speaks a hello, or
    // is dropped as soon as its bytes cannot be one.
    for (auto it = joined.begin(); it != joined.end();) {
      std::vector<uint8_t> extra;
      it = net::recv_available(it->socket.fd(), extra) ? it + 1 : joined.erase(it);
    }
    for (auto it = waiting.begin(); it != waiting.end();) {
      bool open = net::recv_available(it->socket.fd(), it->received);
      size_t used = 0;
      std::string bad;
      ParseResult r = decode_hello(it->received, it->hello, used, bad);
      if (r == ParseResult::ok) {
        joined.push_back(std::move(*it));
        it = waiting.erase(it);
      } else if (r == ParseResult::invalid || !open) {
        strays += r == ParseResult::invalid;
        it = waiting.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::vector<Hello> hellos{own};
  for (Peer& p : joined) hellos.push_back(p.hello);
  std::string where = fmt::format("port {} (MASTER_PORT)", env.master_port);
  std::string error = int(hellos.size()) < env.world_size ? timeout_error(hellos, env.world_size, timeout_s, where, strays)
                                                           : check_hellos(hellos, env.world_size);
  const std::vector<uint8_t> verdict = verdict_of(error, blob);
  const net::Deadline send_by = net::deadline_after(2.0);
  for (Peer& p : joined) net::send_all(p.socket.fd(), verdict.data(), verdict.size(), send_by);
  if (!error.empty()) fail("rendezvous: {}", error);
  return blob;
}

std::vector<uint8_t> join(const DistEnv& env, const Hello& own, double timeout_s) {
  const net::Deadline deadline = net::deadline_after(timeout_s);
  const std::string where = fmt::format("{}:{}", env.master_addr, env.master_port);
  const std::vector<uint8_t> hello = encode_hello(own);
  std::string why;
  while (true) {
    net::Socket s = net::connect_to(env.master_addr, env.master_port, deadline, why);
    if (s.valid()) {
      uint8_t header[12];
      if (!net::send_all(s.fd(), hello.data(), hello.size(), deadline)) {
        why = "the connection closed while sending the hello";
      } else if (net::recv_all(s.fd(), header, sizeof header, deadline)) {
        net::Reader r(header, sizeof header);
        uint32_t magic = 0, status = 0, n = 0;
        r.u32(magic), r.u32(status), r.u32(n);
        std::vector<uint8_t> verdict(header, header + sizeof header);
        if (magic == kRendezvousMagic && n <= kMaxVerdict) {
          verdict.resize(sizeof header + n);
          if (n && !net::recv_all(s.fd(), verdict.data() + sizeof header, n, deadline)) verdict.resize(sizeof header);
        }
        return accept_verdict(verdict, own.rank, where);
      } else if (net::seconds_left(deadline) <= 0) {
        fail("rendezvous: rank {} reached rank 0 at {} but had no answer within {:.3g} s (train.dist_timeout_s): "
             "rank 0 waits for ranks that did not come",
             own.rank, where, timeout_s);
      } else {
        why = "rank 0 closed the connection without an answer";
      }
    }
    if (net::seconds_left(deadline) <= 0)
      fail("rendezvous: rank {} could not reach rank 0 at {} within {:.3g} s (MASTER_ADDR/MASTER_PORT, "
           "train.dist_timeout_s): {}",
           own.rank, where, timeout_s, why);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// ---- through torchrun's store ----

std::vector<uint8_t> through_store(const DistEnv& env, const Hello& own, const std::vector<uint8_t>& blob,
                                   double timeout_s) {
  const net::Deadline deadline = net::deadline_after(timeout_s), hellos_by = net::deadline_after(hello_wait_s(timeout_s));
  TcpStoreClient store(env.master_addr, env.master_port, deadline);
  const std::string p = env.store_prefix;
  const int64_t ticket = store.add(p + "joined", 1, deadline);
  store.set(p + "hello/" + std::to_string(ticket), encode_hello(own), deadline);
  if (env.rank != 0) {
    try {
      return accept_verdict(store.get(p + "verdict", deadline), own.rank, "torchrun's store at " + store.address());
    } catch (const Error& e) {
      if (net::seconds_left(deadline) > 0) throw;
      fail("rendezvous: rank {} had no answer from rank 0 within {:.3g} s (train.dist_timeout_s) through "
           "torchrun's store at {}: {}",
           own.rank, timeout_s, store.address(), e.what());
    }
  }
  std::vector<std::string> keys;
  for (int t = 1; t <= env.world_size; ++t) keys.push_back(p + "hello/" + std::to_string(t));
  // Each query may take a moment past the wait's deadline, so that the store's answer to the
  // last one, and the verdict, still get through.
  auto grace = [] { return net::deadline_after(2.0); };
  while (!store.check(keys, grace()) && net::seconds_left(hellos_by) > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const net::Deadline after = grace();
  std::vector<Hello> hellos;
  int strays = 0;
  for (const std::string& key : keys) {
    if (!store.check({key}, after)) continue;
    Hello h;
    size_t used = 0;
    std::string why;
    if (decode_hello(store.get(key, after), h, used, why) == ParseResult::ok)
      hellos.push_back(h);
    else
      strays++;
  }
  std::string error;
  int64_t came = store.add(p + "joined", 0, after);
  if (int(hellos.size()) < env.world_size)
    error = timeout_error(hellos, env.world_size, timeout_s, "torchrun's store " + store.address(), strays);
  else if (came > env.world_size)
    error = fmt::format("{} processes joined a world of {} ranks: the launcher started more ranks than WORLD_SIZE",
                        came, env.world_size);
  else
    error = check_hellos(hellos, env.world_size);
  store.set(p + "verdict", verdict_of(error, blob), after);
  if (!error.empty()) fail("rendezvous: {}", error);
  return blob;
}

}  // namespace

std::vector<uint8_t> encode_hello(const Hello& h) {
  net::Writer w;
  w.u32(kRendezvousMagic).u32(h.version).u32(uint32_t(h.rank)).u32(uint32_t(h.world_size)).u32(uint32_t(h.local_rank));
  w.u64(h.config_hash);
  for (const std::string* s : {&h.host, &h.device}) {
    std::string cut = s->substr(0, kMaxName);
    w.u16(uint16_t(cut.size())).raw(cut.data(), cut.size());
  }
  return w.data();
}

ParseResult decode_hello(const std::vector<uint8_t>& data, Hello& out, size_t& used, std::string& why) {
  net::Reader r(data.data(), data.size());
  uint32_t magic = 0, version = 0, rank = 0, world = 0, local = 0;
  if (!r.u32(magic)) return ParseResult::need_more;
  if (magic != kRendezvousMagic) {
    why = fmt::format("the first bytes are not coil's magic ({:#010x} instead of {:#010x})", magic, kRendezvousMagic);
    return ParseResult::invalid;
  }
  if (!r.u32(version)) return ParseResult::need_more;
  Hello h;
  h.version = version;
  if (version != kRendezvousVersion) {  // another coil: its layout may differ, rank 0 reports it
    out = h;
    used = r.used();
    return ParseResult::ok;
  }
  uint64_t hash = 0;
  if (!r.u32(rank) || !r.u32(world) || !r.u32(local) || !r.u64(hash)) return ParseResult::need_more;
  for (std::string* s : {&h.host, &h.device}) {
    uint16_t n = 0;
    if (!r.u16(n)) return ParseResult::need_more;
    if (n > kMaxName) {
      why = fmt::format("a name of {} bytes (at most {})", n, kMaxName);
      return ParseResult::invalid;
    }
    s->resize(n);
    if (!r.raw(s->data(), n)) return ParseResult::need_more;
  }
  h.rank = int(int32_t(rank));
  h.world_size = int(int32_t(world));
  h.local_rank = int(int32_t(local));
  h.config_hash = hash;
  out = h;
  used = r.used();
  return ParseResult::ok;
}

std::string check_hellos(const std::vector<Hello>& hellos, int world_size) {
  const Hello& root = hellos.at(0);
  auto who = [](const Hello& h) { return fmt::format("rank {} (host {})", h.rank, h.host.empty() ? "?" : h.host); };
  for (const Hello& h : hellos) {
    if (h.version != root.version)
      return fmt::format("a rank speaks coil's rendezvous version {}, rank 0 version {}: every rank must run the same "
                         "coil build",
                         h.version, root.version);
    if (h.world_size != world_size || h.rank < 0 || h.rank >= world_size)
      return fmt::format("{} was started as rank {} of {} ranks, rank 0 as one of {}: the launcher's world sizes "
                         "disagree",
                         who(h), h.rank, h.world_size, world_size);
  }
  std::map<int, const Hello*> by_rank;
  std::map<std::string, const Hello*> by_device;
  std::vector<int> other_config;
  for (const Hello& h : hellos) {
    auto [it, fresh] = by_rank.emplace(h.rank, &h);
    if (!fresh)
      return fmt::format("rank {} joined twice (hosts {} and {}): two processes were given the same rank", h.rank,
                         it->second->host, h.host);
    if (h.config_hash != root.config_hash) other_config.push_back(h.rank);
    if (h.device.empty()) continue;
    auto [dev, unused] = by_device.emplace(h.host + "/" + h.device, &h);
    if (!unused)
      return fmt::format("ranks {} and {} both use GPU {} on host {}: each rank needs its own GPU (check LOCAL_RANK "
                         "and CUDA_VISIBLE_DEVICES, and start at most one rank per GPU)",
                         dev->second->rank, h.rank, h.device, h.host);
  }
  if (!other_config.empty()) {
    std::sort(other_config.begin(), other_config.end());
    return fmt::format("rank {} resolved another config than rank 0 (config hash differs): start every rank with the "
                       "same config file and --set overrides",
                       rank_list(other_config));
  }
  return "";
}

std::vector<uint8_t> rendezvous(const DistEnv& env, const Hello& hello, const std::vector<uint8_t>& blob,
                                double timeout_s) {
  COIL_CHECK(timeout_s > 0, "rendezvous: the timeout must be positive, got {} s", timeout_s);
  if (env.world_size == 1) return blob;
  if (env.agent_store) return through_store(env, hello, blob, timeout_s);
  return env.rank == 0 ? serve(env, hello, blob, timeout_s) : join(env, hello, timeout_s);
}

}  // namespace coil::dist
