#include <cmath>

#include "kernels/adamw.h"

namespace coil::kernels::cpu {
namespace {

float grad_at(const Tensor& g, int64_t i) {
  return g.dtype() == DType::f32 ? g.data<float>()[i] : bf16_to_float(g.data<bf16>()[i]);
}

}  // namespace

void adamw_step(const MultiTensorPlan& plan, float lr, float clip, const AdamWHyper& h, int64_t step) {
  const float b1 = float(h.beta1), b2 = float(h.beta2), eps = float(h.eps);
  const float step_size = float(double(lr) / (1.0 - std::pow(h.beta1, double(step))));
  const float bc2_sqrt = float(std::sqrt(1.0 - std::pow(h.beta2, double(step))));
  for (const AdamWSlot& s : plan.slots) {
    float* p = s.param.data<float>();
    float* m = s.m.data<float>();
    float* v = s.v.data<float>();
    const float decay = 1.f - lr * float(s.weight_decay);
    for (int64_t i = 0; i < s.grad.numel(); ++i) {
      const float g = grad_at(s.grad, i) * clip;
      p[i] *= decay;
      m[i] = b1 * m[i] + (1.f - b1) * g;
      v[i] = b2 * v[i] + (1.f - b2) * g * g;
      p[i] -= step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
      if (s.copy.defined()) s.copy.data<bf16>()[i] = float_to_bf16(p[i]);
    }
  }
}

double grad_sumsq(const MultiTensorPlan& plan) {
  double sum = 0;
  for (const AdamWSlot& s : plan.slots)
    for (int64_t i = 0; i < s.grad.numel(); ++i) {
      double g = grad_at(s.grad, i);
      sum += g * g;
    }
  return sum;
}

void norm_and_clip(double sumsq, double max_norm, const GradNorm& out) {
  const float norm = float(std::sqrt(sumsq));
  *out.norm.data<float>() = norm;
  float clip = 1.f;
  if (max_norm > 0) clip = std::isfinite(norm) ? std::min(1.f, float(max_norm) / (norm + 1e-6f)) : NAN;
  *out.clip.data<float>() = clip;
}

void scale_grads(const MultiTensorPlan& plan, float s) {
  for (const AdamWSlot& slot : plan.slots)
    for (int64_t i = 0; i < slot.grad.numel(); ++i) {
      if (slot.grad.dtype() == DType::f32)
        slot.grad.data<float>()[i] *= s;
      else
        slot.grad.data<bf16>()[i] = float_to_bf16(bf16_to_float(slot.grad.data<bf16>()[i]) * s);
    }
}

}  // namespace coil::kernels::cpu
