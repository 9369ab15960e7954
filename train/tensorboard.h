// A TensorBoard event file of scalars, written by hand (TFRecord framing with masked CRC-32C,
// the Event and Summary protobufs encoded directly): events.out.tfevents.<time>.<host> in the
// run directory, readable by `tensorboard --logdir runs`.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>

namespace coil::train {

uint32_t crc32c(const void* data, size_t n);

class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& dir);
  void scalar(const std::string& tag, int64_t step, double value);
  const std::string& path() const { return path_; }

 private:
  void record(const std::string& event);
  std::string path_;
  std::ofstream out_;
};

}  // namespace coil::train
