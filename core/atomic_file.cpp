#include "core/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace coil {
namespace fs = std::filesystem;

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void replace_file(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out.good()) {
      fs::path folder = fs::path(path).parent_path();
      std::error_code ec;
      if (!folder.empty() && !fs::is_directory(folder, ec))
        fail("cannot write '{}': the folder '{}' does not exist", path, folder.string());
      fail("cannot write '{}' (no permission?)", tmp);
    }
    write(out);
    out.flush();
    COIL_CHECK(out.good(), "cannot write '{}' (disk full?); '{}' is unchanged", tmp, path);
  }
  fsync_path(tmp, false);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail("cannot rename '{}' to '{}': {}", tmp, path, ec.message());
  fs::path parent = fs::path(path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), true);
}

void replace_file(const std::string& path, const std::string& content) {
  replace_file(path, [&](std::ostream& out) { out << content; });
}

}  // namespace coil
