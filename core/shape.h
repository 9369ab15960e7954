#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace coil {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3]"

}  // namespace coil
