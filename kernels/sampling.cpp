#include "kernels/sampling.h"

#include <cmath>

namespace coil::kernels {

void check_sampling_options(const char* op, const SamplingOptions& o, int64_t columns) {
  COIL_CHECK(std::isfinite(o.temperature) && o.temperature >= 0, "{}: temperature must be >= 0 (0: greedy), got {}",
             op, o.temperature);
  COIL_CHECK(o.top_k >= 0, "{}: top_k must be >= 0 (0: off), got {}", op, o.top_k);
  COIL_CHECK(o.top_p > 0 && o.top_p <= 1, "{}: top_p must be in (0, 1] (1: off), got {}", op, o.top_p);
  COIL_CHECK(o.vocab >= 0 && o.vocab <= columns, "{}: vocab {} must be in [0, {}] (the logits' columns)", op, o.vocab,
             columns);
}

void sample_tokens(const Tensor& logits, const Tensor& counters, const SamplingOptions& options, const Tensor& out) {
  const char* op = "sample_tokens";
  check_defined(op, logits, "logits");
  COIL_CHECK(logits.dim() == 2 && logits.size(1) > 0, "{}: logits must be (batch, V) with V > 0, got {}", op,
             describe(logits));
  check_sampling_options(op, options, logits.size(1));
  const int64_t batch = logits.size(0);
  for (auto [name, t] : {std::pair<const char*, const Tensor*>{"counters", &counters}, {"out", &out}}) {
    check_defined(op, *t, name);
    COIL_CHECK(t->dtype() == DType::i32 && t->shape() == Shape({batch}), "{}: {} must be i32 [{}], got {}", op, name,
               batch, describe(*t));
    check_same_device(op, logits, *t);
  }
  if (batch == 0) return;
  if (logits.device().is_cpu()) {
    check_dtype(op, logits, {DType::f32, DType::f64});
    return cpu::sample_tokens(logits, counters, options, out);
  }
#ifdef COIL_CUDA
  check_dtype(op, logits, {DType::f32, DType::bf16});
  cuda::sample_tokens(logits, counters, options, out);
#else
  fail("{}: {} needs CUDA, but coil was built without it", op, describe(logits));
#endif
}

}  // namespace coil::kernels
