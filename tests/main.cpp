// The test runner. When the command line selects the [cuda] cases and no GPU is present, or
// the [multigpu] cases and fewer than two GPUs are, it says so and exits with 77, which
// CTest counts as skipped. With COIL_TEST_ROLE set it plays that role instead (tests/roles.h).
#define CATCH_CONFIG_RUNNER
#if COIL_CATCH_MAJOR >= 3
#include <catch2/catch_session.hpp>
#else
#include <catch2/catch.hpp>
#endif
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/cuda.h"
#include "tests/roles.h"

int main(int argc, char** argv) {
  if (const char* role = std::getenv("COIL_TEST_ROLE")) return coil::test::run_role(role);
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("[cuda]", 0) == 0 && !coil::cuda_available()) {
      std::printf("SKIPPED: no CUDA device (%s); [cuda] test cases not run\n",
                  coil::cuda_unavailable_reason().c_str());
      return 77;
    }
    if (arg == "[multigpu]" && coil::cuda_device_count() < 2) {
      std::printf("SKIPPED: %d CUDA device(s); [multigpu] test cases need 2\n", coil::cuda_device_count());
      return 77;
    }
  }
  return Catch::Session().run(argc, argv);
}
