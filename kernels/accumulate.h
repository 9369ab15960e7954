// dst += src, in place, for tensors of one shape, dtype and device: how gradients are summed
// into leaves and gradient buffers.
#pragma once
#include "core/tensor.h"

namespace coil::kernels {

void accumulate(const Tensor& dst, const Tensor& src);

namespace cpu {
void accumulate(const Tensor& dst, const Tensor& src);
}
namespace cuda {
void accumulate(const Tensor& dst, const Tensor& src);
}

}  // namespace coil::kernels
