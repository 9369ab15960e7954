#include "core/shape.h"

#include "core/device.h"
#include "core/error.h"

namespace coil {

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

Device parse_device(const std::string& name) {
  if (name == "cpu") return Device::cpu();
  if (name == "cuda") return Device::cuda(0);
  if (name.rfind("cuda:", 0) == 0) {
    try {
      return Device::cuda(std::stoi(name.substr(5)));
    } catch (const std::exception&) {
    }
  }
  fail("unknown device '{}' (expected cpu, cuda or cuda:N)", name);
}

}  // namespace coil
