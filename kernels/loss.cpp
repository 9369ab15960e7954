#include "kernels/loss.h"

#include <atomic>

#include "kernels/dispatch.h"
#include "kernels/matmul.h"

namespace coil::kernels {
namespace {

std::atomic<int64_t> chunk_rows_setting{4096};

DType loss_dtype(DType logits) { return logits == DType::f64 ? DType::f64 : DType::f32; }

void check_targets_tensor(const char* op, const Tensor& targets, int64_t N) {
  check_defined(op, targets, "targets");
  check_dtype(op, targets, {DType::i32, DType::i64});
  COIL_CHECK(targets.dim() == 1 && targets.size(0) == N,
             "{}: targets {} must be [{}] (one per row of the logits)", op, describe(targets), N);
}

// Targets given on the host for GPU work are validated here (the count pass does it), then
// copied over; targets on the GPU are checked by the kernels (see loss.h).
Tensor targets_on(const Tensor& targets, Device device, int64_t ignore_index, int64_t V) {
  if (targets.device() == device) return targets;
  COIL_CHECK(targets.device().is_cpu(), "cross_entropy: targets {} must be on the logits' device {} or the CPU",
             describe(targets), device.str());
  Tensor scratch = Tensor::empty({}, DType::f64);
  cpu::cross_entropy_count(targets, ignore_index, V, scratch);
  return targets.to(device);
}

Tensor count_targets(const Tensor& targets, int64_t ignore_index, int64_t V, DType dtype) {
  Tensor count = Tensor::empty({}, dtype, targets.device());
  COIL_DISPATCH("cross_entropy", targets.device(), cpu::cross_entropy_count(targets, ignore_index, V, count),
                cuda::cross_entropy_count(targets, ignore_index, count));
  return count;
}

void rows(const Tensor& logits, const Tensor& targets, int64_t ignore_index, int64_t row0, const Tensor& count,
          const Tensor& grad_loss, const Tensor& lse, bool lse_given, const Tensor& row_loss, const Tensor& grad) {
  if (logits.numel() == 0) return;
  COIL_DISPATCH(
      "cross_entropy", logits.device(),
      cpu::cross_entropy_rows(logits, targets, ignore_index, row0, count, grad_loss, lse, lse_given, row_loss, grad),
      cuda::cross_entropy_rows(logits, targets, ignore_index, row0, count, grad_loss, lse, lse_given, row_loss, grad));
}

Tensor mean_loss(const Tensor& row_loss, const Tensor& count) {
  Tensor loss = Tensor::empty({}, count.dtype(), count.device());
  COIL_DISPATCH("cross_entropy", row_loss.device(), cpu::cross_entropy_mean(row_loss, count, loss),
                cuda::cross_entropy_mean(row_loss, count, loss));
  return loss;
}

}  // namespace

int64_t linear_cross_entropy_chunk_rows() { return chunk_rows_setting.load(); }
void set_linear_cross_entropy_chunk_rows(int64_t rows) {
  COIL_CHECK(rows > 0, "set_linear_cross_entropy_chunk_rows: rows must be > 0, got {}", rows);
  chunk_rows_setting = rows;
}

Tensor cross_entropy_count(const Tensor& targets, int64_t ignore_index, int64_t V, DType dtype) {
  return count_targets(targets, ignore_index, V, dtype);
}

CrossEntropyForward cross_entropy_forward(const Tensor& logits, const Tensor& targets_in, int64_t ignore_index) {
  const char* op = "cross_entropy";
  check_defined(op, logits, "logits");
  check_dtype(op, logits, {DType::f32, DType::f64, DType::bf16});
  COIL_CHECK(logits.dim() == 2 && logits.size(1) > 0, "{}: logits must be [N, V] with V > 0, got {}", op,
             describe(logits));
  const int64_t N = logits.size(0), V = logits.size(1);
  check_targets_tensor(op, targets_in, N);
  Tensor targets = targets_on(targets_in, logits.device(), ignore_index, V);
  DType ldt = loss_dtype(logits.dtype());
  CrossEntropyForward out;
  out.count = count_targets(targets, ignore_index, V, ldt);
  out.lse = Tensor::empty({N}, ldt, logits.device());
  Tensor row_loss = Tensor::empty({N}, ldt, logits.device());
  rows(logits, targets, ignore_index, 0, out.count, Tensor(), out.lse, false, row_loss, Tensor());
  out.loss = mean_loss(row_loss, out.count);
  return out;
}

Tensor cross_entropy_backward(const Tensor& grad_loss, const Tensor& logits, const Tensor& targets_in,
                              const Tensor& lse, const Tensor& count, int64_t ignore_index) {
  const char* op = "cross_entropy_backward";
  check_defined(op, grad_loss, "gradient");
  check_defined(op, logits, "logits");
  COIL_CHECK(grad_loss.numel() == 1 && grad_loss.dtype() == count.dtype(),
             "{}: the gradient {} must be a one-element {} tensor", op, describe(grad_loss),
             dtype_name(count.dtype()));
  check_same_device(op, grad_loss, logits);
  Tensor targets = targets_in.device() == logits.device() ? targets_in : targets_in.to(logits.device());
  Tensor grad = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
  rows(logits, targets, ignore_index, 0, count, grad_loss, lse, true, Tensor(), grad);
  return grad;
}

LinearCrossEntropyForward linear_cross_entropy_forward(const Tensor& hidden, const Tensor& weight,
                                                       const Tensor& targets_in, int64_t ignore_index,
                                                       int64_t chunk_rows, bool compute_grads) {
  const char* op = "linear_cross_entropy";
  check_defined(op, hidden, "hidden");
  check_defined(op, weight, "weight");
  check_dtype(op, hidden, {DType::f32, DType::f64, DType::bf16});
  check_same_device(op, hidden, weight);
  check_same_dtype(op, hidden, weight);
  COIL_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1) && weight.size(0) > 0,
             "{}: expects hidden [N, d] and weight [V, d] with V > 0, got hidden {} and weight {}", op,
             describe(hidden), describe(weight));
  const int64_t N = hidden.size(0), V = weight.size(0), d = hidden.size(1);
  check_targets_tensor(op, targets_in, N);
  if (chunk_rows <= 0) chunk_rows = linear_cross_entropy_chunk_rows();
  Tensor targets = targets_on(targets_in, hidden.device(), ignore_index, V);
  const Device dev = hidden.device();
  const DType ldt = loss_dtype(hidden.dtype());

  LinearCrossEntropyForward out;
  Tensor count = count_targets(targets, ignore_index, V, ldt);
  Tensor row_loss = Tensor::empty({N}, ldt, dev);
  const int64_t chunks = (N + chunk_rows - 1) / chunk_rows;
  // One chunk: its weight gradient is the answer. Several: summed over the chunks in fp32 (or
  // f64) by the products themselves (matmul_into accumulating; on the GPU with no bf16 rounding
  // of each chunk's part).
  Tensor dw;
  if (compute_grads) {
    out.grad_hidden = Tensor::empty({N, d}, hidden.dtype(), dev);
    dw = chunks > 1 ? Tensor::zeros({V, d}, ldt, dev) : Tensor::empty({V, d}, hidden.dtype(), dev);
    if (chunks == 0) dw.zero_();
  }
  for (int64_t c0 = 0; c0 < N; c0 += chunk_rows) {
    const int64_t c1 = std::min(N, c0 + chunk_rows);
    Tensor h = hidden.narrow0(c0, c1);
    Tensor logits = Tensor::empty({c1 - c0, V}, hidden.dtype(), dev);
    matmul_into(h, weight, false, true, logits);
    // logits := d loss / d logits (scaled by 1 / count), row losses into row_loss[c0:c1].
    rows(logits, targets.narrow0(c0, c1), ignore_index, c0, count, Tensor(), Tensor(), false,
         row_loss.narrow0(c0, c1), compute_grads ? logits : Tensor());
    if (!compute_grads) continue;
    matmul_into(logits, weight, false, false, out.grad_hidden.narrow0(c0, c1));
    matmul_into(logits, h, true, false, dw, /*accumulate=*/chunks > 1);
  }
  if (compute_grads) out.grad_weight = dw.dtype() == weight.dtype() ? dw : dw.to(weight.dtype());
  out.loss = mean_loss(row_loss, count);
  return out;
}

Tensor scale_by_scalar(const Tensor& x, const Tensor& s) {
  const char* op = "scale_by_scalar";
  check_defined(op, x, "x");
  check_defined(op, s, "scale");
  check_same_device(op, x, s);
  COIL_CHECK(s.numel() == 1 && is_floating(s.dtype()), "{}: the scale {} must be one floating element", op,
             describe(s));
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  COIL_DISPATCH(op, x.device(), cpu::scale_by_scalar(x, s, out), cuda::scale_by_scalar(x, s, out));
  return out;
}

void check_cross_entropy_targets(Device device) {
  if (device.is_cpu()) return;
#ifdef COIL_CUDA
  cuda::check_targets(device.index);
#endif
}

}  // namespace coil::kernels
