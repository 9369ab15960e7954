// Overlaps the reduction of gradients with backward. Parameter gradients are bound to views of
// one flat buffer per bucket (dist/distributed.h: assign_buckets); a hook on each parameter
// counts the gradients that backward has finished, and a bucket whose parameters are all done
// is handed to `reduce` at once (the data-parallel trainer passes an NCCL all-reduce, or with
// ZeRO-1 a reduce-scatter, on the communication stream), while backward goes on with earlier
// layers. For a reduce-scatter over `shards` ranks (shards >= 1; 0: none) each buffer is padded
// (with zeros) to padded_bucket_numel (dist/zero.h).
#pragma once
#include <functional>

#include "autograd/variable.h"
#include "dist/distributed.h"

namespace coil::dist {

class GradReducer {
 public:
  using ReduceFn = std::function<void(const Tensor& bucket_grads)>;

  GradReducer(std::vector<autograd::Variable> params, size_t bucket_bytes, ReduceFn reduce, int shards = 0);

  // Gradient accumulation reduces only on the last micro-step: call with false before the
  // others' backward, with true before the last one's.
  void set_reduce_this_backward(bool reduce) { reduce_ = reduce; }
  // After backward: hands over buckets whose parameters got no gradient (unused this step),
  // so every rank reduces every bucket in the same order. Resets the counts.
  void finish_backward();
  void zero_grads();

  const std::vector<Bucket>& buckets() const { return buckets_; }
  const Tensor& bucket_buffer(size_t b) const { return buffers_[b]; }

 private:
  void on_grad_ready(size_t bucket);

  std::vector<autograd::Variable> params_;
  std::vector<Bucket> buckets_;
  std::vector<Tensor> buffers_;
  std::vector<size_t> ready_count_;
  std::vector<bool> launched_;
  size_t next_to_launch_ = 0;
  bool reduce_ = true;
  ReduceFn reduce_fn_;
};

}  // namespace coil::dist
