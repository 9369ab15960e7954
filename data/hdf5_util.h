// Thin RAII over the HDF5 C API (1.10, serial), shared by token files and checkpoints.
// Every failing call raises coil::Error naming the call, the file and the object.
#pragma once
#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"

namespace coil::h5 {

// Owns one hid_t and closes it with the right H5*close.
class Handle {
 public:
  Handle() = default;
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = o.id_;
      close_ = o.close_;
      o.id_ = -1;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  void reset() {
    if (id_ >= 0 && close_) close_(id_);
    id_ = -1;
  }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }

 private:
  hid_t id_ = -1;
  herr_t (*close_)(hid_t) = nullptr;
};

// Turns HDF5's automatic error printing off (we raise our own errors) for this process.
void quiet();

Handle open_file(const std::string& path, bool write = false);  // existing file
Handle create_file(const std::string& path);                     // truncates
Handle open_dataset(hid_t loc, const std::string& name, const std::string& file);
bool exists(hid_t loc, const std::string& name);

// Attributes on an object (a file's root group, a dataset).
void write_attr_i64(hid_t obj, const std::string& name, int64_t value);
void write_attr_u64(hid_t obj, const std::string& name, uint64_t value);
void write_attr_f64(hid_t obj, const std::string& name, double value);
void write_attr_str(hid_t obj, const std::string& name, const std::string& value);
bool has_attr(hid_t obj, const std::string& name);
int64_t read_attr_i64(hid_t obj, const std::string& name, const std::string& file);
uint64_t read_attr_u64(hid_t obj, const std::string& name, const std::string& file);
double read_attr_f64(hid_t obj, const std::string& name, const std::string& file);
std::string read_attr_str(hid_t obj, const std::string& name, const std::string& file);

// A whole 1-D or N-D dataset of fixed type. `type` is a native HDF5 type (H5T_NATIVE_FLOAT...).
void write_dataset(hid_t loc, const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
                   const void* data, const std::string& file);
std::vector<hsize_t> dataset_dims(hid_t dataset);

}  // namespace coil::h5
