// coil's version: CMake's project(VERSION ...) and the git commit the source was configured at
// (empty when it was not a git checkout). `coil --version` prints it; metrics.jsonl and
// checkpoints record version_string().
#pragma once
#include <string>

namespace coil {

const char* version();     // "0.1.0"
const char* git_commit();  // "4c840682f244", or ""
// "0.1.0+4c840682f244", or "0.1.0" without a commit.
std::string version_string();

}  // namespace coil
