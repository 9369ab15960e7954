#include "core/tensor.h"

#include <cstring>

#include "core/allocator.h"
#include "core/cuda.h"
#include "core/convert.h"

namespace coil {

Storage::Storage(Device device, size_t bytes)
    : data(device_alloc(device, bytes)), bytes(bytes), device(device) {}

Storage::~Storage() { device_free(device, data, bytes); }

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t s : shape)
    COIL_CHECK(s >= 0, "Tensor::empty: negative size in shape {}", shape_str(shape));
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(device, size_t(coil::numel(shape)) * dtype_size(dtype));
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero_();
  return t;
}

Tensor Tensor::ones(const Shape& shape, DType dtype, Device device) {
  return full(shape, 1.0, dtype, device);
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(double value, DType dtype, Device device) { return full({}, value, dtype, device); }

Tensor Tensor::arange(int64_t n, DType dtype, Device device) {
  std::vector<double> values{};
  values.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) values[size_t(i)] = double(i);
  return from_vector(values, {n}, dtype, device);
}

template <class T>
Tensor Tensor::from_vector(const std::vector<T>& values, const Shape& shape, DType dtype, Device device) {
  COIL_CHECK(int64_t(values.size()) == coil::numel(shape),
             "Tensor::from_vector: {} values for shape {} ({} elements)", values.size(),
             shape_str(shape), coil::numel(shape));
  Tensor host = empty(shape, dtype_of<T>(), Device::cpu());
  if (!values.empty()) std::memcpy(host.raw(), values.data(), values.size() * sizeof(T));
  return host.to(device, dtype);
}

template Tensor Tensor::from_vector(const std::vector<float>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector(const std::vector<double>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector(const std::vector<int32_t>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector(const std::vector<int64_t>&, const Shape&, DType, Device);
template Tensor Tensor::from_vector(const std::vector<bf16>&, const Shape&, DType, Device);

int64_t Tensor::size(int64_t d) const {
  int64_t n = dim();
  COIL_CHECK(d >= -n && d < n, "Tensor::size: dim {} out of range for {}", d, describe(*this));
  return shape_[size_t(d < 0 ? d + n : d)];
}

void* Tensor::raw() const {
  COIL_CHECK(defined(), "Tensor: access to the data of an undefined tensor");
  return static_cast<char*>(storage_->data) + offset_;
}

Tensor Tensor::reshape(const Shape& shape) const {
  Shape resolved = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      COIL_CHECK(infer < 0, "reshape: more than one -1 in {}", shape_str(shape));
      infer = int64_t(i);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    COIL_CHECK(known > 0 && numel() % known == 0, "reshape: cannot view {} as {}", describe(*this),
               shape_str(shape));
    resolved[size_t(infer)] = numel() / known;
  }
  COIL_CHECK(coil::numel(resolved) == numel(), "reshape: cannot view {} as {}", describe(*this),
             shape_str(shape));
  Tensor t = *this;
  t.shape_ = resolved;
  return t;
}

Tensor Tensor::narrow0(int64_t begin, int64_t end) const {
  COIL_CHECK(dim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0],
             "narrow0: rows [{}, {}) out of range for {}", begin, end, describe(*this));
  Tensor t = *this;
  int64_t row = dim() > 1 ? coil::numel(Shape(shape_.begin() + 1, shape_.end())) : 1;
  t.offset_ += size_t(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::view_bytes(size_t byte_offset, const Shape& shape, DType dtype) const {
  size_t bytes = size_t(coil::numel(shape)) * dtype_size(dtype);
  COIL_CHECK(defined() && byte_offset + bytes <= nbytes(),
             "view_bytes: {} bytes at offset {} exceed {}", bytes, byte_offset, describe(*this));
  Tensor t = *this;
  t.offset_ += byte_offset;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::to(Device device) const { return to(device, dtype_); }
Tensor Tensor::to(DType dtype) const { return to(this->device(), dtype); }

Tensor Tensor::to(Device device, DType dtype) const {
  Tensor out = empty(shape_, dtype, device);
  out.copy_(*this);
  return out;
}

Tensor Tensor::clone() const { return to(device(), dtype_); }

// Device crossings move raw bytes first (in the source dtype), then convert where the
// destination lives, so a conversion never needs both devices at once.
void Tensor::copy_(const Tensor& src) {
  check_defined("copy_", src, "source");
  mark_modified();
  COIL_CHECK(src.numel() == numel(), "copy_: {} into {}: element counts differ", describe(src),
             describe(*this));
  if (src.device() == device()) {
    convert_same_device(src, *this);
    return;
  }
  if (src.dtype() != dtype_) {
    Tensor staged = empty(src.shape(), src.dtype(), device());
    staged.copy_(src);
    convert_same_device(staged, *this);
    return;
  }
  if (nbytes() == 0) return;
  if (src.device().is_cpu())
    cuda::memcpy_host_to_device(raw(), src.raw(), nbytes());
  else if (device().is_cpu())
    cuda::memcpy_device_to_host(raw(), src.raw(), nbytes());
  else
    cuda::memcpy_device_to_device(raw(), src.raw(), nbytes());
}

void Tensor::fill_(double value) {
  mark_modified();
  fill_same_device(*this, value);
}
void Tensor::zero_() { fill_(0.0); }

template <class T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = to(Device::cpu(), dtype_of<T>());
  const T* p = host.data<T>();
  return std::vector<T>(p, p + host.numel());
}

template std::vector<float> Tensor::to_vector() const;
template std::vector<double> Tensor::to_vector() const;
template std::vector<int32_t> Tensor::to_vector() const;
template std::vector<int64_t> Tensor::to_vector() const;

double Tensor::item() const {
  COIL_CHECK(numel() == 1, "item: {} has {} elements, not 1", describe(*this), numel());
  return to_vector<double>()[0];
}

std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined";
  return fmt::format("{}{} {}", dtype_name(t.dtype()), shape_str(t.shape()), t.device().str());
}

void check_defined(const char* op, const Tensor& t, const char* what) {
  COIL_CHECK(t.defined(), "{}: {} is an undefined tensor", op, what);
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  COIL_CHECK(a.device() == b.device(), "{}: tensors on different devices: {} and {}", op,
             describe(a), describe(b));
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  COIL_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ: {} and {}", op, describe(a), describe(b));
}

void check_same_shape(const char* op, const Tensor& a, const Tensor& b) {
  COIL_CHECK(a.shape() == b.shape(), "{}: shapes differ: {} and {}", op, describe(a), describe(b));
}

void check_dtype(const char* op, const Tensor& t, std::initializer_list<DType> allowed) {
  std::string names;
  for (DType d : allowed) {
    if (t.dtype() == d) return;
    names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
  }
  fail("{}: unsupported dtype in {} (supported: {})", op, describe(t), names);
}

void check_dim(const char* op, const Tensor& t, int64_t dim) {
  COIL_CHECK(t.dim() == dim, "{}: expected a {}-d tensor, got {}", op, dim, describe(t));
}

}  // namespace coil
