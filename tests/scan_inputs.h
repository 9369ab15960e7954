// Random inputs of the selective scan in Mamba's ranges (dt about 0.05..0.7 after softplus,
// A negative as S4D-real), every optional input present, shared by the scan's tests.
#pragma once
#include "core/random.h"
#include "kernels/selective_scan.h"

namespace coil::test {

inline kernels::ScanArgs random_scan_args(int64_t batch, int64_t len, int64_t dim, int64_t state, uint64_t seed,
                                          DType dtype = DType::f64, bool h0 = true) {
  Generator gen(seed);
  kernels::ScanArgs a;
  a.u = randn({batch, len, dim}, gen, dtype);
  a.delta = uniform({batch, len, dim}, -3.0, 0.5, gen, dtype);
  a.A = uniform({dim, state}, -4.0, -0.2, gen, dtype);
  a.B = randn({batch, len, state}, gen, dtype);
  a.C = randn({batch, len, state}, gen, dtype);
  a.D = randn({dim}, gen, dtype);
  a.z = randn({batch, len, dim}, gen, dtype);
  a.delta_bias = uniform({dim}, -1.0, 0.5, gen, dtype);
  if (h0) a.initial_state = randn({batch, dim, state}, gen, dtype, Device::cpu(), 0.5);
  a.delta_softplus = true;
  return a;
}

}  // namespace coil::test
