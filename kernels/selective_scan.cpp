#include "kernels/selective_scan.h"

#include <cstdlib>
#include <string>

#include "kernels/documents.h"

namespace coil::kernels {
namespace {

void check_shape(const char* op, const Tensor& t, const char* what, const Shape& expected) {
  COIL_CHECK(t.shape() == expected, "{}: {} must have shape {}, got {}", op, what, shape_str(expected),
             describe(t));
}

void check_device(const char* op, const Tensor& t, const char* what, const Tensor& u) {
  COIL_CHECK(t.device() == u.device(), "{}: {} is on {} but u is on {}: {}", op, what, t.device().str(),
             u.device().str(), describe(t));
}

}  // namespace

void check_scan_args(const char* op, const ScanArgs& a) {
  check_defined(op, a.u, "u");
  check_defined(op, a.delta, "delta");
  check_defined(op, a.A, "A");
  check_defined(op, a.B, "B");
  check_defined(op, a.C, "C");
  COIL_CHECK(a.u.dim() == 3, "{}: u must be (batch, length, dim), got {}", op, describe(a.u));
  COIL_CHECK(a.A.dim() == 2, "{}: A must be (dim, state), got {}", op, describe(a.A));
  const int64_t batch = a.u.size(0), len = a.u.size(1), dim = a.u.size(2), state = a.A.size(1);
  check_shape(op, a.delta, "delta", a.u.shape());
  check_shape(op, a.A, "A", {dim, state});
  check_shape(op, a.B, "B", {batch, len, state});
  check_shape(op, a.C, "C", {batch, len, state});
  if (a.z.defined()) check_shape(op, a.z, "z", a.u.shape());
  if (a.D.defined()) check_shape(op, a.D, "D", {dim});
  if (a.delta_bias.defined()) check_shape(op, a.delta_bias, "delta_bias", {dim});
  if (a.initial_state.defined()) check_shape(op, a.initial_state, "initial_state", {batch, dim, state});
  COIL_CHECK(state >= 1, "{}: d_state must be at least 1, got A {}", op, describe(a.A));
  if (a.seq_idx.defined()) check_seq_idx(op, a.seq_idx, batch, len, a.u);

  const Tensor* all[] = {&a.delta, &a.A, &a.B, &a.C, &a.D, &a.z, &a.delta_bias, &a.initial_state};
  const char* names[] = {"delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"};
  for (int i = 0; i < 8; ++i)
    if (all[i]->defined()) check_device(op, *all[i], names[i], a.u);

  if (a.u.device().is_cpu()) {
    check_dtype(op, a.u, {DType::f32, DType::f64});
    for (int i = 0; i < 8; ++i)
      if (all[i]->defined())
        COIL_CHECK(all[i]->dtype() == a.u.dtype(),
                   "{}: the CPU reference takes every tensor in u's dtype {}; {} is {}", op,
                   dtype_name(a.u.dtype()), names[i], describe(*all[i]));
  } else {
    check_dtype(op, a.u, {DType::f32, DType::bf16});
    const Tensor* act[] = {&a.delta, &a.B, &a.C, &a.z};
    const char* act_names[] = {"delta", "B", "C", "z"};
    for (int i = 0; i < 4; ++i)
      if (act[i]->defined())
        COIL_CHECK(act[i]->dtype() == a.u.dtype(), "{}: {} must have u's dtype {}, got {}", op,
                   act_names[i], dtype_name(a.u.dtype()), describe(*act[i]));
    const Tensor* f32s[] = {&a.A, &a.D, &a.delta_bias, &a.initial_state};
    const char* f32_names[] = {"A", "D", "delta_bias", "initial_state"};
    for (int i = 0; i < 4; ++i)
      if (f32s[i]->defined())
        COIL_CHECK(f32s[i]->dtype() == DType::f32, "{}: {} must be f32, got {}", op, f32_names[i],
                   describe(*f32s[i]));
    COIL_CHECK(state <= kScanMaxStateCuda,
               "{}: d_state {} exceeds the CUDA kernel's limit of {} states (A {})", op, state,
               kScanMaxStateCuda, describe(a.A));
  }
}

namespace {

bool waves_valid(float w) { return w > 0.f && w <= 64.f; }

ScanWaves waves_from_environment() {
  ScanWaves w;
  const char* v = std::getenv("COIL_SCAN_WAVES");
  if (!v) return w;
  char* end = nullptr;
  w.forward = std::strtof(v, &end);
  const bool comma = *end == ',';
  if (comma) w.backward = std::strtof(end + 1, &end);
  COIL_CHECK(comma && *end == '\0' && waves_valid(w.forward) && waves_valid(w.backward),
             "COIL_SCAN_WAVES must be two numbers in (0, 64], forward and backward waves, as \"3,3\", got '{}'", v);
  return w;
}

ScanWaves& waves_setting() {
  static ScanWaves w = waves_from_environment();
  return w;
}

ScanBackward backward_from_environment() {
  const char* v = std::getenv("COIL_SCAN_BWD");
  if (!v || std::string(v) == "pairs") return ScanBackward::channel_pairs;
  COIL_CHECK(std::string(v) == "one", "COIL_SCAN_BWD must be 'one' or 'pairs', got '{}'", v);
  return ScanBackward::one_channel;
}

ScanBackward& backward_setting() {
  static ScanBackward k = backward_from_environment();
  return k;
}

}  // namespace

ScanBackward scan_backward_kind() { return backward_setting(); }
void set_scan_backward_kind(ScanBackward kind) { backward_setting() = kind; }

const ScanWaves& scan_waves() { return waves_setting(); }

void set_scan_waves(const ScanWaves& w) {
  COIL_CHECK(waves_valid(w.forward) && waves_valid(w.backward),
             "set_scan_waves: waves must be in (0, 64], got forward {}, backward {}", w.forward, w.backward);
  waves_setting() = w;
}

ScanResult selective_scan_forward(const ScanArgs& args, bool save_checkpoints) {
  const char* op = "selective_scan_forward";
  check_scan_args(op, args);
  const int64_t batch = args.u.size(0), len = args.u.size(1), dim = args.u.size(2), state = args.A.size(1);
  const Device dev = args.u.device();
  ScanResult r;
  r.out = Tensor::empty(args.u.shape(), args.u.dtype(), dev);
  r.final_state = Tensor::empty({batch, dim, state}, args.A.dtype(), dev);
  if (dev.is_cpu()) {
    cpu::selective_scan_forward(args, r);
    return r;
  }
#ifdef COIL_CUDA
  if (save_checkpoints) {
    const int64_t chunks = (len + kScanCheckpointSteps - 1) / kScanCheckpointSteps;
    r.checkpoints = Tensor::empty({batch, dim, chunks, state}, DType::f32, dev);
  }
  if (batch * dim * len == 0) {
    if (args.initial_state.defined()) r.final_state.copy_(args.initial_state);
    else r.final_state.zero_();
    return r;
  }
  cuda::selective_scan_forward(args, r);
  return r;
#else
  (void)save_checkpoints;
  (void)len;
  fail("{}: {} needs CUDA, but coil was built without it", op, describe(args.u));
#endif
}

ScanGrads selective_scan_backward(const ScanArgs& args, const ScanResult& saved, const Tensor& grad_out,
                                  const Tensor& grad_final_state, bool deterministic) {
  const char* op = "selective_scan_backward";
  check_scan_args(op, args);
  const int64_t batch = args.u.size(0), dim = args.u.size(2), state = args.A.size(1);
  const Device dev = args.u.device();
  check_defined(op, grad_out, "grad_out");
  check_shape(op, grad_out, "grad_out", args.u.shape());
  check_device(op, grad_out, "grad_out", args.u);
  COIL_CHECK(grad_out.dtype() == args.u.dtype(), "{}: grad_out must have u's dtype, got {}", op,
             describe(grad_out));
  if (grad_final_state.defined()) {
    check_shape(op, grad_final_state, "grad_final_state", {batch, dim, state});
    check_device(op, grad_final_state, "grad_final_state", args.u);
    COIL_CHECK(grad_final_state.dtype() == args.A.dtype(), "{}: grad_final_state must be {}, got {}", op,
               dtype_name(args.A.dtype()), describe(grad_final_state));
  }
  ScanGrads g;
  auto like = [&](const Tensor& t) { return Tensor::empty(t.shape(), t.dtype(), dev); };
  g.du = like(args.u);
  g.ddelta = like(args.delta);
  g.dA = like(args.A);
  g.dB = like(args.B);
  g.dC = like(args.C);
  if (args.D.defined()) g.dD = like(args.D);
  if (args.z.defined()) g.dz = like(args.z);
  if (args.delta_bias.defined()) g.ddelta_bias = like(args.delta_bias);
  if (args.initial_state.defined()) g.dinitial_state = like(args.initial_state);
  if (dev.is_cpu()) {
    cpu::selective_scan_backward(args, grad_out, grad_final_state, g);
    return g;
  }
#ifdef COIL_CUDA
  const int64_t len = args.u.size(1);
  const int64_t chunks = (len + kScanCheckpointSteps - 1) / kScanCheckpointSteps;
  COIL_CHECK(saved.checkpoints.defined(), "{}: the forward saved no checkpoints (save_checkpoints = false)", op);
  check_shape(op, saved.checkpoints, "saved checkpoints", {batch, dim, chunks, state});
  if (batch * dim * len == 0) {
    for (Tensor* t : {&g.du, &g.ddelta, &g.dA, &g.dB, &g.dC, &g.dD, &g.dz, &g.ddelta_bias})
      if (t->defined()) t->zero_();
    if (g.dinitial_state.defined()) {
      if (grad_final_state.defined()) g.dinitial_state.copy_(grad_final_state);
      else g.dinitial_state.zero_();
    }
    return g;
  }
  cuda::selective_scan_backward(args, saved, grad_out, grad_final_state, g, deterministic);
  return g;
#else
  (void)saved;
  (void)deterministic;
  fail("{}: {} needs CUDA, but coil was built without it", op, describe(args.u));
#endif
}

}  // namespace coil::kernels
