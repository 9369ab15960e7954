// Plain TCP with deadlines (POSIX sockets), for the rendezvous of data-parallel ranks and the
// client of torchrun's TCPStore. Every wait polls with the time left to a steady-clock
// deadline in milliseconds, rounded up, so a wait never ends before its deadline; none waits
// past it. Integers on the wire are little-endian.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace coil::dist::net {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

Deadline deadline_after(double seconds);
double seconds_left(Deadline deadline);

// An owned socket descriptor (closed on destruction); -1 when there is none.
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() { close(); }
  Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void close();

 private:
  int fd_ = -1;
};

// One connection attempt to host:port (every address the name resolves to, in order), given
// up at the deadline. Returns no socket and says why on failure (refused, unknown host, ...).
Socket connect_to(const std::string& host, int port, Deadline deadline, std::string& why);
// A listening socket on every IPv4 interface; no socket and why on failure (port in use, ...).
Socket listen_on(int port, std::string& why);
// Accepts one pending connection (non-blocking descriptor); no socket if none is pending.
Socket accept_from(const Socket& server);

// Waits until `fd` has data or was closed by the peer (true), or the deadline passes (false).
bool wait_readable(int fd, Deadline deadline);
// Exactly n bytes before the deadline; false if the peer left, or time ran out.
bool send_all(int fd, const void* data, size_t n, Deadline deadline);
bool recv_all(int fd, void* data, size_t n, Deadline deadline);
// What is there to read now, without waiting (appended to `out`); false once the peer closed.
bool recv_available(int fd, std::vector<uint8_t>& out);

// Little-endian encoding of integers, strings and byte vectors (u64 length + bytes).
class Writer {
 public:
  Writer& u8(uint8_t v);
  Writer& u16(uint16_t v);
  Writer& u32(uint32_t v);
  Writer& u64(uint64_t v);
  Writer& i64(int64_t v) { return u64(uint64_t(v)); }
  Writer& raw(const void* data, size_t n);
  Writer& bytes(const std::vector<uint8_t>& v);  // u64 length + bytes
  Writer& string(const std::string& s);          // u64 length + bytes
  const std::vector<uint8_t>& data() const { return out_; }

 private:
  std::vector<uint8_t> out_;
};

// Reads from a buffer; each getter is false (and reads nothing) where the buffer is too short.
class Reader {
 public:
  Reader(const uint8_t* data, size_t n) : data_(data), n_(n) {}
  bool u8(uint8_t& v);
  bool u16(uint16_t& v);
  bool u32(uint32_t& v);
  bool u64(uint64_t& v);
  bool raw(void* out, size_t n);
  size_t used() const { return pos_; }

 private:
  const uint8_t* data_;
  size_t n_, pos_ = 0;
};

}  // namespace coil::dist::net
