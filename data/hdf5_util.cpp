#include "data/hdf5_util.h"

#include <filesystem>
#include <mutex>

namespace coil::h5 {

void quiet() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

Handle open_file(const std::string& path, bool write) {
  quiet();
  hid_t f = H5Fopen(path.c_str(), write ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) fail("hdf5: cannot open '{}' (missing, unreadable or not an HDF5 file)", path);
  return Handle(f, H5Fclose);
}

Handle create_file(const std::string& path) {
  quiet();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) {
    std::filesystem::path folder = std::filesystem::path(path).parent_path();
    std::error_code ec;
    if (!folder.empty() && !std::filesystem::is_directory(folder, ec))
      fail("hdf5: cannot create '{}': the folder '{}' does not exist", path, folder.string());
    fail("hdf5: cannot create '{}' (no permission, or the disk is full?)", path);
  }
  return Handle(f, H5Fclose);
}

bool exists(hid_t loc, const std::string& name) {
  quiet();
  std::string n = name[0] == '/' ? name.substr(1) : name;
  return H5Lexists(loc, n.c_str(), H5P_DEFAULT) > 0;
}

Handle open_dataset(hid_t loc, const std::string& name, const std::string& file) {
  quiet();
  if (!exists(loc, name)) fail("hdf5: '{}' has no dataset '{}'", file, name);
  hid_t d = H5Dopen2(loc, name.c_str(), H5P_DEFAULT);
  if (d < 0) fail("hdf5: cannot open dataset '{}' in '{}'", name, file);
  return Handle(d, H5Dclose);
}

namespace {
void write_attr(hid_t obj, const std::string& name, hid_t type, const void* value) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (!attr.valid() || H5Awrite(attr, type, value) < 0) fail("hdf5: cannot write attribute '{}'", name);
}
Handle open_attr(hid_t obj, const std::string& name, const std::string& file) {
  if (H5Aexists(obj, name.c_str()) <= 0) fail("hdf5: '{}' has no attribute '{}'", file, name);
  hid_t a = H5Aopen(obj, name.c_str(), H5P_DEFAULT);
  if (a < 0) fail("hdf5: cannot open attribute '{}' of '{}'", name, file);
  return Handle(a, H5Aclose);
}
template <class T>
T read_attr(hid_t obj, const std::string& name, hid_t type, const std::string& file) {
  Handle a = open_attr(obj, name, file);
  T value{};
  if (H5Aread(a, type, &value) < 0) fail("hdf5: cannot read attribute '{}' of '{}' as a number", name, file);
  return value;
}
}  // namespace

void write_attr_i64(hid_t obj, const std::string& name, int64_t v) { write_attr(obj, name, H5T_NATIVE_INT64, &v); }
void write_attr_u64(hid_t obj, const std::string& name, uint64_t v) { write_attr(obj, name, H5T_NATIVE_UINT64, &v); }
void write_attr_f64(hid_t obj, const std::string& name, double v) { write_attr(obj, name, H5T_NATIVE_DOUBLE, &v); }

void write_attr_str(hid_t obj, const std::string& name, const std::string& value) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, value.empty() ? 1 : value.size());
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  H5Tset_cset(type, H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  std::string buf = value.empty() ? std::string(1, '\0') : value;
  if (!attr.valid() || H5Awrite(attr, type, buf.data()) < 0) fail("hdf5: cannot write attribute '{}'", name);
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

int64_t read_attr_i64(hid_t obj, const std::string& name, const std::string& file) {
  return read_attr<int64_t>(obj, name, H5T_NATIVE_INT64, file);
}
uint64_t read_attr_u64(hid_t obj, const std::string& name, const std::string& file) {
  return read_attr<uint64_t>(obj, name, H5T_NATIVE_UINT64, file);
}
double read_attr_f64(hid_t obj, const std::string& name, const std::string& file) {
  return read_attr<double>(obj, name, H5T_NATIVE_DOUBLE, file);
}

std::string read_attr_str(hid_t obj, const std::string& name, const std::string& file) {
  Handle a = open_attr(obj, name, file);
  Handle type(H5Aget_type(a), H5Tclose);
  if (H5Tget_class(type) != H5T_STRING) fail("hdf5: attribute '{}' of '{}' is not a string", name, file);
  if (H5Tis_variable_str(type) > 0) {
    // Written by h5py as a variable-length string.
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(type));
    char* ptr = nullptr;
    if (H5Aread(a, mem, &ptr) < 0) fail("hdf5: cannot read attribute '{}' of '{}'", name, file);
    std::string out = ptr ? ptr : "";
    Handle space(H5Aget_space(a), H5Sclose);
    H5free_memory(ptr);
    return out;
  }
  size_t size = H5Tget_size(type);
  std::string buf(size, '\0');
  if (H5Aread(a, type, buf.data()) < 0) fail("hdf5: cannot read attribute '{}' of '{}'", name, file);
  size_t end = buf.find('\0');
  if (end != std::string::npos) buf.resize(end);
  return buf;
}

void write_dataset(hid_t loc, const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
                   const void* data, const std::string& file) {
  Handle space(H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  if (dims.empty()) space = Handle(H5Screate(H5S_SCALAR), H5Sclose);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  Handle d(H5Dcreate2(loc, name.c_str(), type, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (!d.valid()) fail("hdf5: cannot create dataset '{}' in '{}'", name, file);
  hsize_t n = 1;
  for (auto x : dims) n *= x;
  if (n > 0 && H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail("hdf5: cannot write dataset '{}' in '{}'", name, file);
}

std::vector<hsize_t> dataset_dims(hid_t dataset) {
  Handle space(H5Dget_space(dataset), H5Sclose);
  int rank = H5Sget_simple_extent_ndims(space);
  std::vector<hsize_t> dims(size_t(rank > 0 ? rank : 0));
  if (rank > 0) H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  return dims;
}

}  // namespace coil::h5
