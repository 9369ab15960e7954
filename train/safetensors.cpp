#include "train/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/atomic_file.h"

namespace coil::train {
namespace fs = std::filesystem;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the safetensors library's own limit

// Bytes per element of the format's dtypes (0: not a safetensors dtype).
uint64_t element_bytes(const std::string& dtype) {
  for (const char* d : {"F64", "I64", "U64"})
    if (dtype == d) return 8;
  for (const char* d : {"F32", "I32", "U32"})
    if (dtype == d) return 4;
  for (const char* d : {"BF16", "F16", "I16", "U16"})
    if (dtype == d) return 2;
  for (const char* d : {"BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2"})
    if (dtype == d) return 1;
  return 0;
}

// The dtypes read() converts to coil tensors.
bool readable(const std::string& dtype) {
  for (const char* d : {"F32", "BF16", "F16", "F64", "I64", "I32"})
    if (dtype == d) return true;
  return false;
}

DType coil_dtype(const std::string& dtype) {
  if (dtype == "F64") return DType::f64;
  if (dtype == "I64") return DType::i64;
  if (dtype == "I32") return DType::i32;
  if (dtype == "BF16") return DType::bf16;
  return DType::f32;  // F32, and F16 widened
}

// IEEE 754 half precision to float (normals, subnormals, infinities, NaN).
float half_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h >> 15) << 31, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: mantissa * 2^-24
    float v = float(mantissa) * 5.9604644775390625e-8f;
    std::memcpy(&bits, &v, 4);
    bits |= sign;
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint64_t read_u64_le(const unsigned char* b) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(b[i]) << (8 * i);
  return n;
}

// A non-negative JSON integer, or an error naming the entry and what it is.
uint64_t count(const nlohmann::json& j, const std::string& where, const std::string& what) {
  if (!j.is_number_unsigned() && !(j.is_number_integer() && j.get<int64_t>() >= 0))
    fail("{}: {} must be a non-negative integer, got {}", where, what, j.dump());
  return j.get<uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& e, const std::string& where) {
  if (!e.is_object()) fail("{}: expected an object, got {}", where, e.dump());
  SafetensorsEntry out;
  out.name = name;
  for (const char* key : {"dtype", "shape", "data_offsets"})
    if (!e.contains(key)) fail("{}: lacks \"{}\"", where, key);
  if (!e["dtype"].is_string()) fail("{}: dtype must be a string, got {}", where, e["dtype"].dump());
  out.dtype = e["dtype"].get<std::string>();
  uint64_t size = element_bytes(out.dtype);
  if (size == 0) fail("{}: dtype {} is not a safetensors dtype", where, out.dtype);
  if (!e["shape"].is_array()) fail("{}: shape must be a list, got {}", where, e["shape"].dump());
  uint64_t elements = 1;
  for (auto& d : e["shape"]) {
    uint64_t n = count(d, where, "every dimension of shape");
    if (n != 0 && elements > (uint64_t(1) << 62) / n) fail("{}: shape {} is too large", where, e["shape"].dump());
    elements *= n;
    out.shape.push_back(int64_t(n));
  }
  const auto& offsets = e["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail("{}: data_offsets must be [begin, end], got {}", where, offsets.dump());
  out.begin = count(offsets[0], where, "data_offsets[0]");
  out.end = count(offsets[1], where, "data_offsets[1]");
  if (out.end < out.begin || out.end - out.begin != elements * size)
    fail("{}: data_offsets [{}, {}] hold {} bytes but {} of shape {} needs {}", where, out.begin, out.end,
         out.end >= out.begin ? out.end - out.begin : 0, out.dtype, e["shape"].dump(), elements * size);
  return out;
}

}  // namespace

SafetensorsReader::SafetensorsReader(const std::string& path) : path_(path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) fail("safetensors: '{}' is not a file", path);
  const uint64_t file_size = fs::file_size(path);
  std::ifstream in(path, std::ios::binary);
  unsigned char len[8];
  if (!in.read(reinterpret_cast<char*>(len), 8)) fail("safetensors: '{}' is shorter than its 8-byte header length", path);
  const uint64_t n = read_u64_le(len);
  if (n > kMaxHeaderBytes || n > file_size - 8)
    fail("safetensors: '{}' declares a header of {} bytes but the file has {} bytes after the length", path, n,
         file_size - 8);
  std::string text(n, '\0');
  if (!in.read(text.data(), std::streamsize(n))) fail("safetensors: '{}': reading the header failed", path);
  data_start_ = 8 + n;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    fail("safetensors: '{}': the header is not valid JSON ({})", path, e.what());
  }
  if (!header.is_object()) fail("safetensors: '{}': the header must be a JSON object", path);
  for (auto& [name, value] : header.items()) {
    std::string where = fmt::format("safetensors: '{}': tensor '{}'", path, name);
    if (name == "__metadata__") {
      if (!value.is_object()) fail("safetensors: '{}': __metadata__ must be an object of strings", path);
      for (auto& [k, v] : value.items()) {
        if (!v.is_string()) fail("safetensors: '{}': __metadata__ value of '{}' must be a string, got {}", path, k, v.dump());
        metadata_.emplace_back(k, v.get<std::string>());
      }
      continue;
    }
    SafetensorsEntry e = parse_entry(name, value, where);
    if (e.end > file_size - data_start_)
      fail("{}: its data ends at byte {} of the data section, past the end of the file ({} bytes of data)", where,
           e.end, file_size - data_start_);
    entries_.push_back(std::move(e));
  }
  std::sort(entries_.begin(), entries_.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.begin < b.begin; });
  const SafetensorsEntry* furthest = nullptr;  // the entry reaching furthest so far
  for (auto& e : entries_) {
    if (e.begin == e.end) continue;
    if (furthest && e.begin < furthest->end)
      fail("safetensors: '{}': the data of '{}' and '{}' overlap", path, furthest->name, e.name);
    if (!furthest || e.end > furthest->end) furthest = &e;
  }
}

const SafetensorsEntry* SafetensorsReader::find(const std::string& name) const {
  for (auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

Tensor SafetensorsReader::read(const SafetensorsEntry& entry) const {
  if (!readable(entry.dtype))
    fail("safetensors: '{}': tensor '{}' is {}, which coil does not read (F32, BF16, F16, F64, I64, I32)", path_,
         entry.name, entry.dtype);
  std::ifstream in(path_, std::ios::binary);
  in.seekg(std::streamoff(data_start_ + entry.begin));
  Tensor t = Tensor::empty(entry.shape, coil_dtype(entry.dtype));
  if (entry.dtype != "F16") {
    in.read(static_cast<char*>(t.raw()), std::streamsize(t.nbytes()));
  } else {
    std::vector<uint16_t> halves(size_t(t.numel()));
    in.read(reinterpret_cast<char*>(halves.data()), std::streamsize(halves.size() * 2));
    float* out = t.data<float>();
    for (size_t i = 0; i < halves.size(); ++i) out[i] = half_to_float(halves[i]);
  }
  if (!in) fail("safetensors: '{}': reading tensor '{}' failed", path_, entry.name);
  return t;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors, const std::string& dtype,
                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  COIL_CHECK(dtype == "F32" || dtype == "BF16", "safetensors: dtype must be F32 or BF16, got '{}'", dtype);
  DType dt = dtype == "F32" ? DType::f32 : DType::bf16;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    auto& m = header["__metadata__"] = nlohmann::ordered_json::object();
    for (auto& [k, v] : metadata) m[k] = v;
  }
  std::vector<Tensor> data;
  uint64_t offset = 0;
  for (auto& [name, tensor] : tensors) {
    COIL_CHECK(!header.contains(name), "safetensors: '{}' would hold two tensors named '{}'", path, name);
    Tensor t = tensor.to(Device::cpu(), dt);
    nlohmann::ordered_json e;
    e["dtype"] = dtype;
    e["shape"] = t.shape();
    e["data_offsets"] = {offset, offset + t.nbytes()};
    header[name] = std::move(e);
    offset += t.nbytes();
    data.push_back(t);
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text += ' ';  // the data starts 8-byte aligned
  replace_file(path, [&](std::ostream& out) {
    unsigned char len[8];
    for (int b = 0; b < 8; ++b) len[b] = static_cast<unsigned char>(uint64_t(text.size()) >> (8 * b));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), std::streamsize(text.size()));
    for (auto& t : data) out.write(static_cast<const char*>(t.raw()), std::streamsize(t.nbytes()));
  });
}

NamedTensors read_safetensors(const std::string& path) {
  SafetensorsReader reader(path);
  NamedTensors out;
  for (auto& e : reader.entries()) out.emplace_back(e.name, reader.read(e));
  return out;
}

}  // namespace coil::train
