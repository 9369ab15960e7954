// Multi-tensor kernels for the optimizer: a fused AdamW step over every parameter in one
// launch, and the global gradient norm with its clipping coefficient, all on the device with
// no host sync (the learning rate and the clip coefficient are read from device memory).
//
// AdamW (decoupled weight decay, PyTorch's torch.optim.AdamW), per element, fp32:
//   g  = grad * clip                          (clip: a device scalar, or 1)
//   p  = p * (1 - lr * wd)                    (wd: the slot's weight decay, 0 for no decay)
//   m  = beta1 m + (1 - beta1) g
//   v  = beta2 v + (1 - beta2) g^2
//   p  = p - (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//   copy = bf16(p)                            (when the slot has a compute copy)
// Gradient norm: norm = sqrt(sum over all slots of grad^2), per-chunk partial sums then one
// fixed-order sum (deterministic); clip = min(1, max_norm / (norm + 1e-6)) (1 when max_norm <= 0;
// NaN when the norm is not finite, so a bad step is visible, as in PyTorch). In two parts for
// sharded optimizers: the sum of squares of a rank's shard, and the norm from the sum over ranks.
#pragma once
#include <vector>

#include "core/tensor.h"

namespace coil::kernels {

struct AdamWSlot {
  Tensor param;         // f32 master value (may be undefined in a gradient-only plan)
  Tensor grad;          // f32 or bf16 (GPU), param's numel
  Tensor m, v;          // f32 moments, param's numel
  Tensor copy;          // bf16 compute copy, or undefined
  double weight_decay = 0;
};

// A fixed list of slots as the kernels read them. On a GPU: a device table of pointers and a
// list of (slot, chunk) work items, uploaded once (an asynchronous host-to-device copy) when
// the plan is made, so a step costs one launch. The plan holds the tensors it points to.
struct MultiTensorPlan {
  std::vector<AdamWSlot> slots;
  Device device;
  int64_t numel = 0;
  int64_t num_chunks = 0;
  Tensor table;   // GPU: the slots' pointers, sizes and weight decays
  Tensor chunks;  // GPU: i32 [num_chunks, 2] (slot, chunk index)
};
constexpr int64_t kMultiTensorChunk = 65536;

// Checks the slots (devices, dtypes, sizes) and builds the plan. grad_only: only the gradients
// are used (norm and scaling).
MultiTensorPlan make_multi_tensor_plan(std::vector<AdamWSlot> slots, bool grad_only = false);

struct AdamWHyper {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};
// lr: f32 scalar on the plan's device; clip: f32 scalar there, or undefined (1). step: the
// step number counting this one (1 for the first), for the bias corrections.
void adamw_step(const MultiTensorPlan& plan, const Tensor& lr, const Tensor& clip, const AdamWHyper& hyper,
                int64_t step);

struct GradNorm {
  Tensor norm;  // f32 scalar on the plan's device
  Tensor clip;  // f32 scalar: the clipping coefficient for max_norm
};
GradNorm grad_norm(const MultiTensorPlan& plan, double max_norm);
// The sum of the squared gradients of every slot: an f64 scalar on the plan's device.
Tensor grad_sumsq(const MultiTensorPlan& plan);
// The norm sqrt(sumsq) and the clipping coefficient for max_norm, from an f64 scalar.
GradNorm norm_and_clip(const Tensor& sumsq, double max_norm);
// grad *= s for every slot (s an f32 scalar on the device): clipping outside the optimizer.
void scale_grads(const MultiTensorPlan& plan, const Tensor& s);

namespace cpu {
void adamw_step(const MultiTensorPlan& plan, float lr, float clip, const AdamWHyper& hyper, int64_t step);
double grad_sumsq(const MultiTensorPlan& plan);
void norm_and_clip(double sumsq, double max_norm, const GradNorm& out);
void scale_grads(const MultiTensorPlan& plan, float s);
}  // namespace cpu
namespace cuda {
void upload_plan(MultiTensorPlan& plan);
void adamw_step(const MultiTensorPlan& plan, const Tensor& lr, const Tensor& clip, const AdamWHyper& hyper,
                int64_t step);
void grad_sumsq(const MultiTensorPlan& plan, const Tensor& out);
void norm_and_clip(const Tensor& sumsq, double max_norm, const GradNorm& out);
void scale_grads(const MultiTensorPlan& plan, const Tensor& s);
}  // namespace cuda

}  // namespace coil::kernels
