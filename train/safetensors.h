// safetensors files (the format of Hugging Face's `safetensors` library): an 8-byte
// little-endian header length n, n bytes of JSON
//   {"__metadata__": {"key": "value", ...},
//    "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
// (offsets count from the first byte after the header), then the tensors' little-endian bytes.
// coil writes F32 or BF16 with the header padded by spaces to a multiple of 8 (the data starts
// 8-byte aligned), metadata first, tensors in the order given and back to back.
//
// The one reader and writer of the format in coil: `coil export` (train/hf_interop.h) and the
// import of Hugging Face and mamba_ssm model directories use it.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "train/checkpoint.h"

namespace coil::train {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as stored: F32, BF16, F16, F64, I64, I32, BOOL, U8, ...
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range in the data section
};

// An open file: the header is parsed and checked at construction (valid JSON, every entry with
// a safetensors dtype, a shape and offsets whose byte count matches them, that end inside the
// file and overlap no other entry); errors name the file and the entry. Tensors are read on
// demand; entries of dtypes coil does not read (BOOL buffers, say) are listed all the same.
class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path);
  const std::string& path() const { return path_; }
  // Every tensor, in the order of its data in the file.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::vector<std::pair<std::string, std::string>>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;  // nullptr when absent
  // A CPU tensor of the entry's dtype; F16, which coil has no dtype for, is widened to f32.
  // Other dtypes than F32, BF16, F16, F64, I64 and I32 are an error naming the tensor.
  Tensor read(const SafetensorsEntry& entry) const;

 private:
  std::string path_;
  uint64_t data_start_ = 0;  // 8 + header length
  std::vector<SafetensorsEntry> entries_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

// Writes `tensors` (any device, converted to `dtype`: "F32" or "BF16") to "<path>.tmp", then
// renames it to `path`, so an existing file is replaced only by a complete one.
void write_safetensors(const std::string& path, const NamedTensors& tensors, const std::string& dtype = "F32",
                       const std::vector<std::pair<std::string, std::string>>& metadata = {});
// Every tensor of a file, in data order.
NamedTensors read_safetensors(const std::string& path);

}  // namespace coil::train
