#include "dist/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>

namespace coil::dist::net {

Deadline deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

double seconds_left(Deadline deadline) { return std::chrono::duration<double>(deadline - Clock::now()).count(); }

namespace {

// The time left in whole milliseconds, rounded up (0 once the deadline passed).
int poll_ms(Deadline deadline) {
  double left = seconds_left(deadline);
  return left <= 0 ? 0 : int(std::min(std::ceil(left * 1000.0), 1e9));
}

// Polls `fd` for `events` until the deadline: true when ready (or hung up / in error).
bool wait_for(int fd, short events, Deadline deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int ms = poll_ms(deadline);
    int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || ms == 0) return false;
  }
}

// A connect to a local port nobody listens on can pick that same port as its own and connect
// the socket to itself (TCP's simultaneous open): then both ends have one address.
bool connected_to_itself(int fd) {
  sockaddr_storage a{}, b{};
  socklen_t la = sizeof a, lb = sizeof b;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &la) != 0 ||
      ::getpeername(fd, reinterpret_cast<sockaddr*>(&b), &lb) != 0)
    return false;
  return la == lb && std::memcmp(&a, &b, la) == 0;
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL, 0) | O_NONBLOCK); }

}  // namespace

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Socket connect_to(const std::string& host, int port, Deadline deadline, std::string& why) {
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (rc != 0) {
    why = std::string("cannot resolve '") + host + "': " + ::gai_strerror(rc);
    return Socket();
  }
  why = "no address";
  Socket result;
  for (addrinfo* a = found; a && !result.valid(); a = a->ai_next) {
    Socket s(::socket(a->ai_family, a->ai_socktype, a->ai_protocol));
    if (!s.valid()) continue;
    set_nonblocking(s.fd());
    if (::connect(s.fd(), a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
      why = std::strerror(errno);
      continue;
    }
    if (!wait_for(s.fd(), POLLOUT, deadline)) {
      why = "timed out";
      continue;
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) {
      why = std::strerror(err);
      continue;
    }
    if (connected_to_itself(s.fd())) {  // nothing listens: TCP joined the socket to itself
      why = "connection refused";
      continue;
    }
    int one = 1;
    ::setsockopt(s.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    result = std::move(s);
  }
  ::freeaddrinfo(found);
  return result;
}

Socket listen_on(int port, std::string& why) {
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  if (!s.valid()) {
    why = std::strerror(errno);
    return Socket();
  }
  int one = 1;
  ::setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(uint16_t(port));
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(s.fd(), 128) != 0) {
    why = std::strerror(errno);
    return Socket();
  }
  set_nonblocking(s.fd());
  return s;
}

Socket accept_from(const Socket& server) {
  Socket peer(::accept(server.fd(), nullptr, nullptr));
  if (peer.valid()) {
    set_nonblocking(peer.fd());
    int one = 1;
    ::setsockopt(peer.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return peer;
}

bool wait_readable(int fd, Deadline deadline) { return wait_for(fd, POLLIN, deadline); }

bool send_all(int fd, const void* data, size_t n, Deadline deadline) {
  const char* p = static_cast<const char*>(data);
  while (n) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (k > 0) {
      p += k, n -= size_t(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_for(fd, POLLOUT, deadline)) continue;
    return false;
  }
  return true;
}

bool recv_all(int fd, void* data, size_t n, Deadline deadline) {
  char* p = static_cast<char*>(data);
  while (n) {
    ssize_t k = ::recv(fd, p, n, MSG_DONTWAIT);
    if (k > 0) {
      p += k, n -= size_t(k);
      continue;
    }
    if (k == 0) return false;  // the peer closed
    if (errno == EINTR) continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_readable(fd, deadline)) continue;
    return false;
  }
  return true;
}

bool recv_available(int fd, std::vector<uint8_t>& out) {
  uint8_t buf[4096];
  while (true) {
    ssize_t k = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (k > 0) {
      out.insert(out.end(), buf, buf + k);
      continue;
    }
    if (k == 0) return false;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
  }
}

Writer& Writer::u8(uint8_t v) {
  out_.push_back(v);
  return *this;
}
Writer& Writer::u16(uint16_t v) {
  for (int i = 0; i < 2; ++i) out_.push_back(uint8_t(v >> (8 * i)));
  return *this;
}
Writer& Writer::u32(uint32_t v) {
  for (int i = 0; i < 4; ++i) out_.push_back(uint8_t(v >> (8 * i)));
  return *this;
}
Writer& Writer::u64(uint64_t v) {
  for (int i = 0; i < 8; ++i) out_.push_back(uint8_t(v >> (8 * i)));
  return *this;
}
Writer& Writer::raw(const void* data, size_t n) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  out_.insert(out_.end(), p, p + n);
  return *this;
}
Writer& Writer::bytes(const std::vector<uint8_t>& v) { return u64(v.size()).raw(v.data(), v.size()); }
Writer& Writer::string(const std::string& s) { return u64(s.size()).raw(s.data(), s.size()); }

bool Reader::raw(void* out, size_t n) {
  if (n_ - pos_ < n) return false;
  std::memcpy(out, data_ + pos_, n);
  pos_ += n;
  return true;
}

namespace {
template <class T>
bool read_le(Reader& r, T& v) {
  uint8_t b[sizeof(T)];
  if (!r.raw(b, sizeof b)) return false;
  v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= T(b[i]) << (8 * i);
  return true;
}
}  // namespace

bool Reader::u8(uint8_t& v) { return read_le(*this, v); }
bool Reader::u16(uint16_t& v) { return read_le(*this, v); }
bool Reader::u32(uint32_t& v) { return read_le(*this, v); }
bool Reader::u64(uint64_t& v) { return read_le(*this, v); }

}  // namespace coil::dist::net
