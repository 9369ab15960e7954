// Roles: functions a test binary runs instead of its tests when started with COIL_TEST_ROLE
// set, so that a test can start several copies of its own binary as the ranks of a
// distributed run (a fresh process each, as CUDA requires).
//   COIL_TEST_ROLE_DEFINE(allreduce) { ...; return 0; }
#pragma once
#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <string>

namespace coil::test {

inline std::map<std::string, std::function<int()>>& roles() {
  static std::map<std::string, std::function<int()>> registry;
  return registry;
}

struct RoleRegistration {
  RoleRegistration(const char* name, std::function<int()> fn) { roles()[name] = std::move(fn); }
};

inline int run_role(const std::string& name) {
  auto it = roles().find(name);
  if (it == roles().end()) {
    std::fprintf(stderr, "no test role '%s' in this binary\n", name.c_str());
    return 2;
  }
  try {
    return it->second();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "role %s failed: %s\n", name.c_str(), e.what());
    return 1;
  }
}

}  // namespace coil::test

#define COIL_TEST_ROLE_DEFINE(name)                                                      \
  static int coil_role_##name();                                                         \
  static ::coil::test::RoleRegistration coil_role_registration_##name(#name, coil_role_##name); \
  static int coil_role_##name()
