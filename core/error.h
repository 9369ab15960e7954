// Errors are exceptions whose message names the op and the tensors involved
// (shapes, dtypes, devices): `fail("add: shapes differ: {} vs {}", describe(a), describe(b))`.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace coil {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An allocation the device (or the host) could not serve: callers that can go on without it
// (a length sweep trying ever longer sequences) catch this one apart from other errors.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace coil

#define COIL_CHECK(cond, ...)               \
  do {                                      \
    if (!(cond)) ::coil::fail(__VA_ARGS__); \
  } while (0)
