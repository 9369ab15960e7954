// CPU reference of token sampling, from the definitions in kernels/sampling.h: sorts for the
// top-k and top-p thresholds, sums in double.
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "core/philox.h"
#include "kernels/sampling.h"

namespace coil::kernels::cpu {
namespace {

template <class T>
int32_t sample_row(const T* logits, int64_t vocab, const SamplingOptions& o, int32_t counter, int64_t row) {
  if (o.temperature == 0) return int32_t(std::max_element(logits, logits + vocab) - logits);
  std::vector<double> s(static_cast<size_t>(vocab));
  for (int64_t v = 0; v < vocab; ++v) s[size_t(v)] = double(float(logits[v]) / float(o.temperature));
  std::vector<double> sorted = s;
  std::sort(sorted.begin(), sorted.end(), std::greater<double>());
  const double max = sorted.front();
  double threshold = o.top_k > 0 && o.top_k < vocab ? sorted[size_t(o.top_k - 1)] : sorted.back();
  if (o.top_p < 1) {
    double kept = 0;
    for (double v : sorted)
      if (v >= threshold) kept += std::exp(v - max);
    double mass = 0;
    for (double v : sorted) {  // descending: the first value at which the mass reaches top_p
      mass += std::exp(v - max);
      if (mass >= o.top_p * kept) {
        threshold = std::max(threshold, v);
        break;
      }
    }
  }
  double total = 0;
  for (double v : s)
    if (v >= threshold) total += std::exp(v - max);
  const uint32_t word = philox4x32_10({{uint32_t(counter), uint32_t(row), 0, 0}}, o.seed).w[0];
  const double target = double(philox_unit(word)) * total;
  double running = 0;
  int32_t last = 0;
  for (int64_t v = 0; v < vocab; ++v) {
    if (s[size_t(v)] < threshold) continue;
    running += std::exp(s[size_t(v)] - max);
    last = int32_t(v);
    if (running > target) return last;
  }
  return last;  // rounding left the target at the total: the last kept id
}

}  // namespace

void sample_tokens(const Tensor& logits, const Tensor& counters, const SamplingOptions& options, const Tensor& out) {
  const int64_t batch = logits.size(0), columns = logits.size(1);
  const int64_t vocab = options.vocab > 0 ? options.vocab : columns;
  const int32_t* c = counters.data<int32_t>();
  int32_t* ids = out.data<int32_t>();
  dispatch_cpu_float("sample_tokens", logits, [&](auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    for (int64_t b = 0; b < batch; ++b) ids[b] = sample_row(logits.data<T>() + b * columns, vocab, options, c[b], b);
  });
}

}  // namespace coil::kernels::cpu
