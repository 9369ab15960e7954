// Catch2 2.x and 3.x behind one include. Tests write Catch::Matchers::Contains("text") for
// a substring match on both (3.x calls it ContainsSubstring).
#pragma once
#if COIL_CATCH_MAJOR >= 3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
#include <string>
using Catch::Approx;
namespace Catch::Matchers {
inline StringContainsMatcher Contains(const char* text) { return ContainsSubstring(text); }
inline StringContainsMatcher Contains(const std::string& text) { return ContainsSubstring(text); }
}  // namespace Catch::Matchers
#else
#include <catch2/catch.hpp>
#endif
