#include "dist/grad_reducer.h"

#include "dist/zero.h"

namespace coil::dist {

GradReducer::GradReducer(std::vector<autograd::Variable> params, size_t bucket_bytes, ReduceFn reduce, int shards)
    : params_(std::move(params)), reduce_fn_(std::move(reduce)) {
  std::vector<size_t> bytes;
  for (const auto& p : params_) {
    COIL_CHECK(p.dtype() == params_[0].dtype() && p.device() == params_[0].device(),
               "GradReducer: parameters must share dtype and device: {} vs {}", describe(p.value()),
               describe(params_[0].value()));
    bytes.push_back(p.value().nbytes());
  }
  buckets_ = assign_buckets(bytes, bucket_bytes);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const Bucket& bucket = buckets_[b];
    DType dtype = params_[bucket.params[0]].dtype();
    const int64_t numel = int64_t(bucket.bytes / dtype_size(dtype));
    Tensor buffer = Tensor::zeros({shards > 0 ? padded_bucket_numel(numel, shards) : numel}, dtype,
                                  params_[bucket.params[0]].device());
    size_t offset = 0;
    for (size_t k : bucket.params) {
      autograd::Variable& p = params_[k];
      p.set_grad(buffer.view_bytes(offset, p.shape(), p.dtype()));
      offset += p.value().nbytes();
      p.add_grad_ready_hook([this, b] { on_grad_ready(b); });
    }
    buffers_.push_back(buffer);
  }
  ready_count_.assign(buckets_.size(), 0);
  launched_.assign(buckets_.size(), false);
}

// Buckets are handed over strictly in order, so every rank issues the same collectives in
// the same sequence even if backward finishes buckets in a different order on each.
void GradReducer::on_grad_ready(size_t bucket) {
  if (!reduce_) return;
  ready_count_[bucket]++;
  while (next_to_launch_ < buckets_.size() &&
         ready_count_[next_to_launch_] == buckets_[next_to_launch_].params.size()) {
    reduce_fn_(buffers_[next_to_launch_]);
    launched_[next_to_launch_] = true;
    next_to_launch_++;
  }
}

void GradReducer::finish_backward() {
  if (reduce_)
    for (; next_to_launch_ < buckets_.size(); ++next_to_launch_)
      if (!launched_[next_to_launch_]) reduce_fn_(buffers_[next_to_launch_]);
  ready_count_.assign(buckets_.size(), 0);
  launched_.assign(buckets_.size(), false);
  next_to_launch_ = 0;
}

void GradReducer::zero_grads() {
  for (Tensor& b : buffers_) b.zero_();
}

}  // namespace coil::dist
