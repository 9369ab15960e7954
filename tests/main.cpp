// The test runner. When the command line selects the [cuda] cases and no GPU is present,
// it says so and exits with 77, which CTest counts as skipped.
#define CATCH_CONFIG_RUNNER
#if COIL_CATCH_MAJOR >= 3
#include <catch2/catch_session.hpp>
#else
#include <catch2/catch.hpp>
#endif
#include <cstdio>
#include <string>

#include "core/cuda.h"

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "[cuda]" && !coil::cuda_available()) {
      std::printf("SKIPPED: no CUDA device (%s); [cuda] test cases not run\n",
                  coil::cuda_unavailable_reason().c_str());
      return 77;
    }
  }
  return Catch::Session().run(argc, argv);
}
