// Element types. f64 exists for gradient checks on the CPU; bf16 is the compute type of the
// GPU path (stored as its 16 raw bits on the host).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace coil {

enum class DType : uint8_t { f32, f64, bf16, i32, i64 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
bool is_floating(DType t);
DType parse_dtype(const std::string& name);  // "f32", "bf16", ...

// bf16 on the host: the upper 16 bits of an IEEE float, rounded to nearest even.
struct bf16 {
  uint16_t bits;
};
bf16 float_to_bf16(float x);
float bf16_to_float(bf16 x);

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<bf16>() { return DType::bf16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }

}  // namespace coil
