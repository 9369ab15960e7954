// File helpers shared by the tests that write run directories, token files and reports.
#pragma once
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace coil::test {

// An empty directory <temp>/<group>/<name>, whatever an earlier run left there.
inline std::filesystem::path fresh_dir(const std::string& group, const std::string& name) {
  std::filesystem::path d = std::filesystem::temp_directory_path() / group / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

}  // namespace coil::test
