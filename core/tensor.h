// Tensor: a contiguous, row-major view of a reference-counted buffer, with a shape, a dtype
// and a device. Copies of a Tensor share the buffer (like a shared_ptr). reshape() and
// narrow0() (a range of rows along dim 0) are free views; every other change of layout is an
// explicit op in kernels/. There are no general strides.
#pragma once
#include <memory>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/shape.h"

namespace coil {

// An owned block of memory on one device; freed through the allocator when the last tensor
// viewing it goes away.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  // Counts the in-place writes to the buffer (through any view): copy_, fill_, zero_ and the
  // kernels that update a tensor in place call mark_modified(). Autograd compares it with the
  // count a node saw when it was recorded (autograd/node.h), as libtorch's version counter.
  uint64_t version = 0;
  Storage(Device device, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false

  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu());
  static Tensor arange(int64_t n, DType dtype = DType::i64, Device device = Device::cpu());
  // Host values converted to dtype and placed on device.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape,
                            DType dtype = dtype_of<T>(), Device device = Device::cpu());
  static Tensor scalar(double value, DType dtype = DType::f32, Device device = Device::cpu());

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  int64_t numel() const { return coil::numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device::cpu(); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }

  void* raw() const;  // start of this view's elements
  template <class T>
  T* data() const;  // checks that T matches dtype()

  // Free views.
  Tensor reshape(const Shape& shape) const;  // one dimension may be -1
  Tensor narrow0(int64_t begin, int64_t end) const;
  Tensor flatten() const { return reshape({numel()}); }
  // A view of `shape` and `dtype` starting `byte_offset` bytes into this tensor's buffer
  // (flat parameter and gradient buffers hand out per-parameter views this way).
  Tensor view_bytes(size_t byte_offset, const Shape& shape, DType dtype) const;

  // Copies (always new buffers).
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const;
  Tensor clone() const;
  void copy_(const Tensor& src);  // same numel; converts dtype and crosses devices
  void fill_(double value);
  void zero_();
  // The buffer's count of in-place writes (Storage::version), and one more of them: every
  // in-place write calls it (copy_, fill_, zero_ do).
  uint64_t version() const { return storage_ ? storage_->version : 0; }
  void mark_modified() const {
    if (storage_) storage_->version += 1;
  }

  template <class T>
  std::vector<T> to_vector() const;  // to the host, converted to T
  double item() const;               // a one-element tensor's value (syncs if on a GPU)

  bool same_buffer(const Tensor& other) const { return storage_ == other.storage_; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes into storage_
  Shape shape_;
  DType dtype_ = DType::f32;
};

// "f32[2, 3] cuda:0" for error messages; "undefined" for an undefined tensor.
std::string describe(const Tensor& t);

// Checks used by every op; each raises an Error naming `op` and the tensors.
void check_defined(const char* op, const Tensor& t, const char* what);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
void check_same_shape(const char* op, const Tensor& a, const Tensor& b);
void check_dtype(const char* op, const Tensor& t, std::initializer_list<DType> allowed);
void check_dim(const char* op, const Tensor& t, int64_t dim);

// Calls f with a typed null pointer matching t's floating dtype: f((float*)nullptr) etc.
// CPU reference kernels use it to instantiate f32 and f64 versions of one template.
template <class F>
void dispatch_cpu_float(const char* op, const Tensor& t, F&& f) {
  switch (t.dtype()) {
    case DType::f32: f(static_cast<float*>(nullptr)); return;
    case DType::f64: f(static_cast<double*>(nullptr)); return;
    default: fail("{}: the CPU reference takes f32 or f64, got {}", op, describe(t));
  }
}

template <class T>
T* Tensor::data() const {
  COIL_CHECK(dtype_ == dtype_of<T>(), "Tensor::data: requested {} from {}", dtype_name(dtype_of<T>()),
             describe(*this));
  return static_cast<T*>(raw());
}

}  // namespace coil
