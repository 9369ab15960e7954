#pragma once
#include <cstdint>
#include <string>

// Marks a function that compiles for the host and, inside CUDA sources, for the device too.
#ifdef __CUDACC__
#define COIL_HOST_DEVICE __host__ __device__
#else
#define COIL_HOST_DEVICE
#endif

namespace coil {

enum class DeviceKind : uint8_t { cpu, cuda };

struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static Device cpu() { return {DeviceKind::cpu, 0}; }
  static Device cuda(int index = 0) { return {DeviceKind::cuda, index}; }
  bool is_cpu() const { return kind == DeviceKind::cpu; }
  bool is_cuda() const { return kind == DeviceKind::cuda; }
  std::string str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

Device parse_device(const std::string& name);  // "cpu", "cuda", "cuda:1"

}  // namespace coil
