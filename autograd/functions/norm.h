#pragma once
#include "autograd/variable.h"

namespace coil::autograd {

// Over the last dim, statistics in fp32. Output in x's dtype.
Variable rms_norm(const Variable& x, const Variable& weight, double eps = 1e-5);
Variable layer_norm(const Variable& x, const Variable& weight, const Variable& bias, double eps = 1e-5);

// The pre-norm block's fused step: residual' = x + residual (residual kept in fp32; an
// undefined residual means x alone, the first block), normed = norm(residual') * weight in
// x's dtype. Returns {normed, residual'}. bias undefined for RMSNorm.
struct NormResidual {
  Variable normed;
  Variable residual;
};
NormResidual add_rms_norm(const Variable& x, const Variable& residual, const Variable& weight,
                          double eps = 1e-5);
NormResidual add_layer_norm(const Variable& x, const Variable& residual, const Variable& weight,
                            const Variable& bias, double eps = 1e-5);

}  // namespace coil::autograd
