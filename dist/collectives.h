// The collective operations that data parallelism uses (dist/communicator.h runs them over
// NCCL; tests may run them between threads). Each call is ordered after the work already
// queued on this rank's compute stream and returns at once; join_compute_stream() makes later
// compute work wait for the collectives queued so far; wait() blocks the host until they are
// done (or the other ranks are given up on).
#pragma once
#include "core/tensor.h"

namespace coil::dist {

class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // Every element becomes the mean (or sum) over the ranks, in place.
  virtual void all_reduce_mean_async(const Tensor& t) = 0;
  virtual void all_reduce_sum_async(const Tensor& t) = 0;
  // `t` (numel a multiple of the world size) is world_size equal shards. In place, shard r of
  // rank r becomes the mean over the ranks of their shard r; the other shards keep no meaning.
  virtual void reduce_scatter_mean_async(const Tensor& t) = 0;
  // The inverse: in place, shard r of every rank becomes rank r's shard r.
  virtual void all_gather_async(const Tensor& t) = 0;

  virtual void join_compute_stream() = 0;
  // `what` names the wait in the error raised when another rank died or hangs.
  virtual void wait(const char* what) = 0;
};

}  // namespace coil::dist
