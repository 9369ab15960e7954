#include "core/version.h"

namespace coil {

// COIL_VERSION and COIL_GIT_COMMIT are defined for this file alone by CMakeLists.txt.
const char* version() { return COIL_VERSION; }
const char* git_commit() { return COIL_GIT_COMMIT; }

std::string version_string() {
  std::string commit = git_commit();
  return commit.empty() ? version() : std::string(version()) + "+" + commit;
}

}  // namespace coil
