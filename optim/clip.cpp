#include "optim/clip.h"

#include "kernels/adamw.h"

namespace coil::optim {
namespace {

kernels::MultiTensorPlan grad_plan(const char* op, const std::vector<autograd::Variable>& params) {
  std::vector<kernels::AdamWSlot> slots;
  for (size_t i = 0; i < params.size(); ++i) {
    COIL_CHECK(params[i].defined(), "{}: parameter {} is undefined", op, i);
    if (!params[i].grad().defined()) continue;
    kernels::AdamWSlot s;
    s.grad = params[i].grad();
    if (!slots.empty())
      COIL_CHECK(s.grad.device() == slots[0].grad.device(), "{}: gradient {} of parameter {} is not on {}", op,
                 describe(s.grad), i, slots[0].grad.device().str());
    slots.push_back(s);
  }
  return kernels::make_multi_tensor_plan(std::move(slots), true);
}

Device device_of(const std::vector<autograd::Variable>& params) {
  for (const auto& p : params)
    if (p.defined()) return p.device();
  return Device::cpu();
}

}  // namespace

Tensor global_grad_norm(const std::vector<autograd::Variable>& params) {
  kernels::MultiTensorPlan plan = grad_plan("global_grad_norm", params);
  if (plan.slots.empty()) return Tensor::zeros({}, DType::f32, device_of(params));
  return kernels::grad_norm(plan, 0.0).norm;
}

Tensor clip_grad_norm(const std::vector<autograd::Variable>& params, double max_norm) {
  COIL_CHECK(max_norm > 0, "clip_grad_norm: max_norm must be > 0, got {}", max_norm);
  kernels::MultiTensorPlan plan = grad_plan("clip_grad_norm", params);
  if (plan.slots.empty()) return Tensor::zeros({}, DType::f32, device_of(params));
  kernels::GradNorm n = kernels::grad_norm(plan, max_norm);
  kernels::scale_grads(plan, n.clip);
  return n.norm;
}

}  // namespace coil::optim
