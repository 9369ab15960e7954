#include "autograd/functions/selective_scan.h"

namespace coil::autograd {
namespace {

Tensor value_or_none(const Variable& v) { return v.defined() ? v.value() : Tensor(); }

// Saves the inputs (the kernel recomputes everything else) and the forward's checkpoints.
struct SelectiveScanNode : Node {
  SelectiveScanNode(kernels::ScanArgs args, kernels::ScanResult saved, bool deterministic)
      : Node("selective_scan"), args(std::move(args)), saved(std::move(saved)), deterministic(deterministic) {}

  Grads backward(const Grads& g) override {
    COIL_CHECK(!released, "selective_scan: backward through a graph whose saved tensors were freed");
    kernels::ScanGrads d = kernels::selective_scan_backward(args, saved, g[0], g.size() > 1 ? g[1] : Tensor(),
                                                            deterministic);
    return Grads{d.du, d.ddelta, d.dA, d.dB, d.dC, d.dD, d.dz, d.ddelta_bias, d.dinitial_state};
  }
  void release_saved() override {
    args = kernels::ScanArgs{};
    saved = kernels::ScanResult{};
    released = true;
  }

  kernels::ScanArgs args;
  kernels::ScanResult saved;
  bool deterministic;
};

}  // namespace

ScanOutputs selective_scan(const ScanInputs& in) {
  kernels::ScanArgs a;
  a.u = value_or_none(in.u);
  a.delta = value_or_none(in.delta);
  a.A = value_or_none(in.A);
  a.B = value_or_none(in.B);
  a.C = value_or_none(in.C);
  a.D = value_or_none(in.D);
  a.z = value_or_none(in.z);
  a.delta_bias = value_or_none(in.delta_bias);
  a.initial_state = value_or_none(in.initial_state);
  a.seq_idx = in.seq_idx;
  a.delta_softplus = in.delta_softplus;
  const std::vector<Variable> inputs = {in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias, in.initial_state};
  const bool needs_grad = any_requires_grad(inputs);
  kernels::ScanResult r = kernels::selective_scan_forward(a, /*save_checkpoints=*/needs_grad);
  if (!needs_grad) return {Variable(r.out), Variable(r.final_state)};
  Tensor out = r.out, final_state = r.final_state;
  r.out = Tensor();  // the backward needs neither output
  r.final_state = Tensor();
  std::vector<Variable> outs =
      record(std::make_shared<SelectiveScanNode>(a, std::move(r), in.deterministic), inputs, {out, final_state});
  return {outs[0], outs[1]};
}

}  // namespace coil::autograd
