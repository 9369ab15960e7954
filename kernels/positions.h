// Fixed sinusoidal positions of the original Transformer (Vaswani et al. 2017, section 3.5),
// added to the token embeddings by models with model.attention.positions: sinusoidal:
//   PE[t, 2i]     = sin(t / 10000^(2i/d))
//   PE[t, 2i + 1] = cos(t / 10000^(2i/d))
// positions (any shape S, i32 or i64, on the output's device) -> out [S..., d]: row s is
// PE[positions[s], :]. No parameters and no table: each element is computed from its
// position, so any position works (up to 2^53, where double holds t exactly) and a captured
// CUDA graph that reads positions on the device gets the values of each replay's positions.
// Every element is computed in double by sinusoidal_position below, the one formula the CPU
// and the GPU both run, then rounded to the output dtype: the two devices agree to that
// rounding. CPU: f32, f64; CUDA: f32, bf16.
#pragma once
#include <cmath>

#include "core/device.h"
#include "core/tensor.h"

namespace coil::kernels {

constexpr double kSinusoidalBase = 10000.0;

// PE[t, j] of a width-d table, in double.
COIL_HOST_DEVICE inline double sinusoidal_position(int64_t t, int64_t j, int64_t d) {
  const double angle = double(t) * pow(kSinusoidalBase, -double(j - j % 2) / double(d));
  return j % 2 == 0 ? sin(angle) : cos(angle);
}

Tensor sinusoidal_positions(const Tensor& positions, int64_t d, DType dtype);

namespace cpu {
void sinusoidal_positions(const Tensor& positions, const Tensor& out);
}
namespace cuda {
void sinusoidal_positions(const Tensor& positions, const Tensor& out);
}

}  // namespace coil::kernels
