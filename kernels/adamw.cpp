#include "kernels/adamw.h"

#include "kernels/dispatch.h"

namespace coil::kernels {
namespace {

void check_scalar(const char* op, const Tensor& t, const char* what, Device device) {
  check_defined(op, t, what);
  COIL_CHECK(t.numel() == 1 && t.dtype() == DType::f32 && t.device() == device,
             "{}: the {} must be an f32 scalar on {}, got {}", op, what, device.str(), describe(t));
}

}  // namespace

MultiTensorPlan make_multi_tensor_plan(std::vector<AdamWSlot> slots, bool grad_only) {
  const char* op = "adamw";
  MultiTensorPlan plan;
  plan.device = slots.empty() ? Device::cpu() : slots[0].grad.device();
  for (size_t i = 0; i < slots.size(); ++i) {
    const AdamWSlot& s = slots[i];
    COIL_CHECK(s.grad.defined(), "{}: parameter {} has no gradient", op, i);
    COIL_CHECK(s.grad.device() == plan.device, "{}: gradient {} of parameter {} is not on {} like the others", op,
               describe(s.grad), i, plan.device.str());
    COIL_CHECK(s.grad.dtype() == DType::f32 || (s.grad.dtype() == DType::bf16 && plan.device.is_cuda()),
               "{}: gradient {} of parameter {} must be f32 (or bf16 on a GPU)", op, describe(s.grad), i);
    if (!grad_only) {
      for (const Tensor* t : {&s.param, &s.m, &s.v}) {
        check_defined(op, *t, "parameter, exp_avg or exp_avg_sq");
        COIL_CHECK(t->dtype() == DType::f32 && t->device() == plan.device && t->numel() == s.grad.numel(),
                   "{}: parameter {}: {} must be f32 on {} with the gradient's {} elements", op, i, describe(*t),
                   plan.device.str(), s.grad.numel());
      }
      if (s.copy.defined())
        COIL_CHECK(s.copy.dtype() == DType::bf16 && s.copy.device() == plan.device &&
                       s.copy.numel() == s.grad.numel(),
                   "{}: parameter {}: the compute copy {} must be bf16 on {} with {} elements", op, i,
                   describe(s.copy), plan.device.str(), s.grad.numel());
    }
    plan.numel += s.grad.numel();
    plan.num_chunks += (s.grad.numel() + kMultiTensorChunk - 1) / kMultiTensorChunk;
  }
  plan.slots = std::move(slots);
  if (plan.device.is_cuda() && plan.num_chunks > 0) {
#ifdef COIL_CUDA
    cuda::upload_plan(plan);
#else
    fail_without_cuda(op, plan.device);
#endif
  }
  return plan;
}

void adamw_step(const MultiTensorPlan& plan, const Tensor& lr, const Tensor& clip, const AdamWHyper& hyper,
                int64_t step) {
  const char* op = "adamw";
  check_scalar(op, lr, "learning rate", plan.device);
  if (clip.defined()) check_scalar(op, clip, "clip coefficient", plan.device);
  COIL_CHECK(step >= 1, "{}: the step number counts from 1, got {}", op, step);
  COIL_CHECK(hyper.beta1 >= 0 && hyper.beta1 < 1 && hyper.beta2 >= 0 && hyper.beta2 < 1 && hyper.eps >= 0,
             "{}: betas must be in [0, 1) and eps >= 0, got betas ({}, {}) and eps {}", op, hyper.beta1,
             hyper.beta2, hyper.eps);
  if (plan.num_chunks == 0) return;
  for (const AdamWSlot& s : plan.slots)
    for (const Tensor* t : {&s.param, &s.m, &s.v, &s.copy}) t->mark_modified();
  COIL_DISPATCH(op, plan.device,
                cpu::adamw_step(plan, *lr.data<float>(), clip.defined() ? *clip.data<float>() : 1.f, hyper, step),
                cuda::adamw_step(plan, lr, clip, hyper, step));
}

GradNorm grad_norm(const MultiTensorPlan& plan, double max_norm) { return norm_and_clip(grad_sumsq(plan), max_norm); }

Tensor grad_sumsq(const MultiTensorPlan& plan) {
  Tensor out = Tensor::zeros({}, DType::f64, plan.device);
  if (plan.num_chunks == 0) return out;
  COIL_DISPATCH("grad_sumsq", plan.device, *out.data<double>() = cpu::grad_sumsq(plan),
                cuda::grad_sumsq(plan, out));
  return out;
}

GradNorm norm_and_clip(const Tensor& sumsq, double max_norm) {
  check_defined("norm_and_clip", sumsq, "sum of squares");
  COIL_CHECK(sumsq.numel() == 1 && sumsq.dtype() == DType::f64, "norm_and_clip: the sum of squares must be an f64 "
             "scalar, got {}", describe(sumsq));
  const Device device = sumsq.device();
  GradNorm out{Tensor::empty({}, DType::f32, device), Tensor::empty({}, DType::f32, device)};
  COIL_DISPATCH("norm_and_clip", device, cpu::norm_and_clip(*sumsq.data<double>(), max_norm, out),
                cuda::norm_and_clip(sumsq, max_norm, out));
  return out;
}

void scale_grads(const MultiTensorPlan& plan, const Tensor& s) {
  check_scalar("scale_grads", s, "scale", plan.device);
  if (plan.num_chunks == 0) return;
  COIL_DISPATCH("scale_grads", plan.device, cpu::scale_grads(plan, *s.data<float>()), cuda::scale_grads(plan, s));
}

}  // namespace coil::kernels
