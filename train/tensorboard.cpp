#include "train/tensorboard.h"

#include <unistd.h>

#include <chrono>
#include <cstring>

#include "core/error.h"

namespace coil::train {

uint32_t crc32c(const void* data, size_t n) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0x82F63B78u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  uint32_t crc = 0xFFFFFFFFu;
  auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFu;
}

namespace {
uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }
void varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += char((v & 0x7F) | 0x80);
    v >>= 7;
  }
  out += char(v);
}
template <class T>
void raw(std::string& out, T v) {
  char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(b, sizeof(T));
}
double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  char host[256] = "localhost";
  gethostname(host, sizeof(host) - 1);
  path_ = dir + "/events.out.tfevents." + std::to_string(int64_t(now_s())) + "." + host;
  out_.open(path_, std::ios::binary | std::ios::app);
  COIL_CHECK(out_.good(), "tensorboard: cannot write '{}'", path_);
  std::string e;
  e += char(0x09);  // wall_time (1, double)
  raw(e, now_s());
  e += char(0x1a);  // file_version (3, string)
  std::string v = "brain.Event:2";
  varint(e, v.size());
  e += v;
  record(e);
}

void TensorBoardWriter::scalar(const std::string& tag, int64_t step, double value) {
  std::string val;
  val += char(0x0a);  // Value.tag (1, string)
  varint(val, tag.size());
  val += tag;
  val += char(0x15);  // Value.simple_value (2, float)
  raw(val, float(value));
  std::string summary;
  summary += char(0x0a);  // Summary.value (1)
  varint(summary, val.size());
  summary += val;
  std::string e;
  e += char(0x09);  // Event.wall_time
  raw(e, now_s());
  e += char(0x10);  // Event.step (2, varint)
  varint(e, uint64_t(step));
  e += char(0x2a);  // Event.summary (5)
  varint(e, summary.size());
  e += summary;
  record(e);
}

void TensorBoardWriter::record(const std::string& data) {
  std::string r;
  uint64_t len = data.size();
  raw(r, len);
  raw(r, masked(crc32c(&len, 8)));
  r += data;
  raw(r, masked(crc32c(data.data(), data.size())));
  out_.write(r.data(), std::streamsize(r.size()));
  out_.flush();
}

}  // namespace coil::train
