#include "dist/tcp_store.h"

#include <thread>

#include "core/error.h"

namespace coil::dist {
namespace {

enum Query : uint8_t { kValidate = 0, kSet = 1, kGet = 3, kAdd = 4, kCheck = 5, kWait = 6, kCancelWait = 12 };
constexpr uint32_t kValidationMagic = 0x3C85F7CE;
constexpr uint8_t kReady = 0, kStopWaiting = 0, kWaitCanceled = 1;
constexpr uint64_t kMaxValueBytes = uint64_t(1) << 30;

net::Writer keys_request(Query q, const std::vector<std::string>& keys) {
  net::Writer w;
  w.u8(q).u64(keys.size());
  for (const std::string& k : keys) w.string(k);
  return w;
}

std::string joined(const std::vector<std::string>& keys) {
  std::string out;
  for (const std::string& k : keys) out += (out.empty() ? "" : ", ") + k;
  return out;
}

}  // namespace

TcpStoreClient::TcpStoreClient(std::string host, int port, net::Deadline deadline)
    : host_(std::move(host)), port_(port) {
  std::string why;
  while (!(socket_ = net::connect_to(host_, port_, deadline, why)).valid()) {
    if (net::seconds_left(deadline) <= 0)
      fail("torchrun's store at {} (MASTER_ADDR:MASTER_PORT) cannot be reached: {}", address(), why);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  net::Writer validate;
  validate.u8(kValidate).u32(kValidationMagic);
  send(validate, "validating the connection", "", deadline);
}

void TcpStoreClient::lost(const char* what, const std::string& key, net::Deadline deadline) const {
  std::string on_key = key.empty() ? "" : " of key '" + key + "'";
  if (net::seconds_left(deadline) <= 0)
    fail("torchrun's store at {}: {}{} timed out (train.dist_timeout_s)", address(), what, on_key);
  fail("torchrun's store at {} closed the connection during {}{} (is MASTER_PORT a PyTorch 2.x TCPStore?)",
       address(), what, on_key);
}

void TcpStoreClient::send(const net::Writer& request, const char* what, const std::string& key,
                          net::Deadline deadline) {
  if (!net::send_all(socket_.fd(), request.data().data(), request.data().size(), deadline)) lost(what, key, deadline);
}

uint8_t TcpStoreClient::receive_u8(const char* what, const std::string& key, net::Deadline deadline) {
  uint8_t v = 0;
  if (!net::recv_all(socket_.fd(), &v, 1, deadline)) lost(what, key, deadline);
  return v;
}

int64_t TcpStoreClient::receive_i64(const char* what, const std::string& key, net::Deadline deadline) {
  uint8_t b[8];
  if (!net::recv_all(socket_.fd(), b, 8, deadline)) lost(what, key, deadline);
  uint64_t v = 0;
  net::Reader(b, 8).u64(v);
  return int64_t(v);
}

std::vector<uint8_t> TcpStoreClient::receive_bytes(const char* what, const std::string& key,
                                                   net::Deadline deadline) {
  uint64_t n = uint64_t(receive_i64(what, key, deadline));
  COIL_CHECK(n <= kMaxValueBytes, "torchrun's store at {}: {} of key '{}' announced {} bytes, more than {}", address(),
             what, key, n, kMaxValueBytes);
  std::vector<uint8_t> value(n);
  if (n && !net::recv_all(socket_.fd(), value.data(), n, deadline)) lost(what, key, deadline);
  return value;
}

void TcpStoreClient::set(const std::string& key, const std::vector<uint8_t>& value, net::Deadline deadline) {
  net::Writer w;
  w.u8(kSet).string(key).bytes(value);
  send(w, "setting", key, deadline);
}

std::vector<uint8_t> TcpStoreClient::get(const std::string& key, net::Deadline deadline) {
  wait({key}, deadline);
  net::Writer w;
  w.u8(kGet).string(key);
  send(w, "getting", key, deadline);
  return receive_bytes("getting", key, deadline);
}

int64_t TcpStoreClient::add(const std::string& key, int64_t delta, net::Deadline deadline) {
  net::Writer w;
  w.u8(kAdd).string(key).i64(delta);
  send(w, "adding to", key, deadline);
  return receive_i64("adding to", key, deadline);
}

bool TcpStoreClient::check(const std::vector<std::string>& keys, net::Deadline deadline) {
  send(keys_request(kCheck, keys), "checking", joined(keys), deadline);
  return receive_u8("checking", joined(keys), deadline) == kReady;
}

void TcpStoreClient::wait(const std::vector<std::string>& keys, net::Deadline deadline) {
  const std::string names = joined(keys);
  send(keys_request(kWait, keys), "waiting for", names, deadline);
  if (net::wait_readable(socket_.fd(), deadline)) {
    uint8_t answer = receive_u8("waiting for", names, deadline);
    COIL_CHECK(answer == kStopWaiting, "torchrun's store at {} answered {} to a wait for '{}'", address(), answer,
               names);
    return;
  }
  // Cancel the wait, so that the connection stays in step; the store answers at once (after a
  // STOP_WAITING if the keys arrived meanwhile).
  net::Writer cancel;
  cancel.u8(kCancelWait);
  net::Deadline grace = net::deadline_after(1.0);
  send(cancel, "cancelling the wait for", names, grace);
  uint8_t answer = receive_u8("cancelling the wait for", names, grace);
  if (answer == kStopWaiting) answer = receive_u8("cancelling the wait for", names, grace);
  COIL_CHECK(answer == kWaitCanceled, "torchrun's store at {} answered {} to cancelling a wait", address(), answer);
  fail("torchrun's store at {}: waiting for '{}' timed out (train.dist_timeout_s)", address(), names);
}

}  // namespace coil::dist
