// A client of PyTorch's TCPStore: the key-value server that torchrun's agent holds on
// MASTER_ADDR:MASTER_PORT (its workers see TORCHELASTIC_USE_AGENT_STORE=True and are meant to
// be clients of it, not to listen there). The wire protocol is PyTorch 2.x's
// (torch/csrc/distributed/c10d/TCPStore.cpp, TCPStoreBackend.hpp, TCPStoreLibUvBackend.cpp):
// a request is one byte of query type followed by its fields; integers in the machine's order
// (little-endian on x86-64 and aarch64, written as such here); a key or value is a u64 length
// and its bytes.
//
//   query           request fields              answer
//   VALIDATE    0   u32 magic 0x3C85F7CE        none (the first request of every connection)
//   SET         1   key, value                  none
//   GET         3   key                         value (the key must exist: wait for it first)
//   ADD         4   key, i64 delta              i64 the new value (stored as decimal text)
//   CHECK       5   u64 n, n keys               u8 0 all exist / 1 not yet
//   WAIT        6   u64 n, n keys               u8 0 (STOP_WAITING) once all exist
//   CANCEL_WAIT 12  -                           u8 1 (WAIT_CANCELED); a STOP_WAITING may come first
//
// PyTorch 1.x spoke an older form (no VALIDATE, other query numbers): this client needs the
// store of PyTorch 2.0 or later. Every call ends by its deadline with an error naming the
// store and the key.
#pragma once
#include <string>
#include <vector>

#include "dist/net.h"

namespace coil::dist {

class TcpStoreClient {
 public:
  // Connects (retrying while the store is not up yet) and validates, by the deadline.
  TcpStoreClient(std::string host, int port, net::Deadline deadline);

  void set(const std::string& key, const std::vector<uint8_t>& value, net::Deadline deadline);
  // Waits until the key exists, then reads it.
  std::vector<uint8_t> get(const std::string& key, net::Deadline deadline);
  int64_t add(const std::string& key, int64_t delta, net::Deadline deadline);
  bool check(const std::vector<std::string>& keys, net::Deadline deadline);
  // Waits until every key exists; at the deadline cancels the wait and raises.
  void wait(const std::vector<std::string>& keys, net::Deadline deadline);

  std::string address() const { return host_ + ":" + std::to_string(port_); }

 private:
  void send(const net::Writer& request, const char* what, const std::string& key, net::Deadline deadline);
  uint8_t receive_u8(const char* what, const std::string& key, net::Deadline deadline);
  int64_t receive_i64(const char* what, const std::string& key, net::Deadline deadline);
  std::vector<uint8_t> receive_bytes(const char* what, const std::string& key, net::Deadline deadline);
  [[noreturn]] void lost(const char* what, const std::string& key, net::Deadline deadline) const;

  std::string host_;
  int port_;
  net::Socket socket_;
};

}  // namespace coil::dist
