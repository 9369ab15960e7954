// Element-wise dtype conversion and fill on one device: the two primitives Tensor's copies
// and creation functions stand on. The CPU loops are in core/convert.cpp, the CUDA kernels
// in core/convert.cu.
#pragma once
#include "core/tensor.h"

namespace coil {

void convert_same_device(const Tensor& src, const Tensor& dst);  // dst[i] = dtype(src[i])
void fill_same_device(const Tensor& dst, double value);

namespace cuda {
void convert(const Tensor& src, const Tensor& dst);
void fill(const Tensor& dst, double value);
}  // namespace cuda

}  // namespace coil
