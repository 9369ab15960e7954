// Drawing the next token of every batch row from its logits, on the device the logits are on
// (generation reads back only the chosen ids). Per row, with s_v = logits_v / temperature over
// the ids v < vocab (ids of the padded vocabulary past it are never drawn):
//   temperature 0: greedy, the argmax of the logits (the lowest id among equal maxima);
//   top_k > 0: keep the ids whose s is >= the k-th largest s (ties at that value are kept);
//   top_p < 1: of those, keep the ids whose s is >= t, for the largest value t at which the
//     kept probability (renormalized over the top-k set) still reaches top_p: the smallest
//     set of highest scores that carries top_p of the mass, ties kept;
//   draw: u = philox_unit(w0) of Philox4x32-10(counter = (counters[b], b, 0, 0), key = seed)
//     (core/philox.h) and return the first id, in id order, at which the running sum of
//     exp(s - max s) over the kept ids exceeds u times their total.
// Generation passes each row's position as its counter, so a row's draws depend on the seed,
// the row and the position alone: the same seed gives the same sample, run after run.
//
// logits (batch, V): CPU f32 or f64 (the reference, sums in double), CUDA f32 or bf16 (fp32
// math, one thread block per row, deterministic reductions). counters (batch) i32 and out
// (batch) i32 live on the logits' device; out is written in place (a static buffer that a
// captured CUDA graph keeps).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace coil::kernels {

struct SamplingOptions {
  double temperature = 1.0;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  double top_p = 1.0;        // in (0, 1]; 1: off
  uint64_t seed = 0;
  int64_t vocab = 0;         // ids >= vocab are never drawn (0: every column of the logits)
};

// Raises for temperature < 0, top_k < 0, top_p outside (0, 1], vocab outside [0, V].
void check_sampling_options(const char* op, const SamplingOptions& options, int64_t columns);

void sample_tokens(const Tensor& logits, const Tensor& counters, const SamplingOptions& options, const Tensor& out);

namespace cpu {
void sample_tokens(const Tensor& logits, const Tensor& counters, const SamplingOptions& options, const Tensor& out);
}
namespace cuda {
void sample_tokens(const Tensor& logits, const Tensor& counters, const SamplingOptions& options, const Tensor& out);
}

}  // namespace coil::kernels
