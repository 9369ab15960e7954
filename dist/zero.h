// ZeRO stage 1 (`train.zero: 1`): AdamW's moments are sharded over the data-parallel ranks.
//
// The gradients live in the reducer's flat buckets (dist/grad_reducer.h); each bucket is
// padded to world_size equal shards (of a multiple of kShardAlign elements) and, instead of
// the all-reduce, reduce-scattered as soon as backward has filled it, so rank r holds the
// mean gradient of shard r of every bucket. Rank r keeps exp_avg and exp_avg_sq of its shards
// only and updates its shards of the fp32 weights; then every bucket of weights is
// all-gathered, and (bf16 runs) the compute copies are rewritten from them. The parameters'
// values are rebound to views of flat weight buckets laid out like the gradient buckets, so
// both collectives work in place.
//
// What is sharded: the moments (8 bytes per parameter become 8 / world_size). The fp32 weights
// stay whole on every rank: the forward reads the embedding, the norms and the SSM parameters
// in fp32 (only matrix products read the bf16 copies), so every rank needs them current.
//
// The update equals the unsharded one element for element (the same fused AdamW kernel, the
// same averaged gradient); the clipping norm is the square root of the ranks' summed sums of
// squares, which differs from the unsharded norm only in rounding.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "autograd/variable.h"
#include "dist/collectives.h"
#include "dist/distributed.h"
#include "optim/adamw.h"

namespace coil::dist {

constexpr int64_t kShardAlign = 16;  // elements: every shard starts 64-byte aligned (f32)

// The part of one parameter that falls into a rank's shard of a bucket.
struct ShardPiece {
  size_t param = 0;           // index into the parameter list
  int64_t param_offset = 0;   // first element of the parameter in the piece
  int64_t bucket_offset = 0;  // where that element sits in the bucket's buffer
  int64_t numel = 0;
};

struct BucketShard {
  int64_t numel = 0;        // the bucket's buffer: world_size x shard_numel
  int64_t shard_numel = 0;  // a multiple of kShardAlign
  int64_t shard_begin = 0;  // this rank's shard: [shard_begin, shard_begin + shard_numel)
  std::vector<size_t> params;          // the bucket's parameters, in order
  std::vector<int64_t> param_offsets;  // where each of them starts
  std::vector<ShardPiece> pieces;      // this rank's, in bucket order
};

// Parameters are packed one after another in bucket order (as the reducer binds them); the
// bucket is padded to world_size x shard_numel.
std::vector<BucketShard> shard_layout(const std::vector<Bucket>& buckets, const std::vector<int64_t>& param_numel,
                                      int world_size, int rank);
// The padded size of a bucket holding `numel` elements.
int64_t padded_bucket_numel(int64_t numel, int world_size);

class GradReducer;

class ShardedAdamW {
 public:
  // `params` in the reducer's order (its gradients are bound to the reducer's buckets, which
  // were padded with padded_bucket_numel); compute_copies: keep bf16 copies of the weights.
  ShardedAdamW(std::vector<std::string> names, std::vector<autograd::Variable> params,
               std::vector<double> weight_decay, const GradReducer& reducer, Collectives& comm,
               optim::AdamWOptions options, bool compute_copies);

  // The global gradient norm (f32 scalar on the device, no host sync) and, for max_norm > 0,
  // the clipping coefficient the next step() applies.
  Tensor clip_grad_norm(double max_norm);
  // This rank's shards, then the all-gather of the weights (queued: later compute waits).
  void step();
  void zero_grad();
  void set_lr(double lr);

  const Tensor& compute_copy(size_t i) const { return copies_.at(i); }
  void refresh_compute_copies();

  int64_t step_count() const { return step_; }
  void set_step_count(int64_t steps) { step_ = steps; }
  // The whole state as "exp_avg/<name>" and "exp_avg_sq/<name>" CPU tensors, gathered from
  // every rank: a collective, every rank calls it and gets the whole state.
  std::vector<std::pair<std::string, Tensor>> state_tensors();
  // Takes this rank's pieces of the whole tensors (any world size wrote them).
  void load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& state);
  // Bytes of optimizer state this rank holds (its shards of both moments).
  size_t state_bytes() const;

 private:
  std::vector<std::string> names_;
  std::vector<autograd::Variable> params_;
  Collectives& comm_;
  optim::AdamWOptions options_;
  Device device_;
  std::vector<BucketShard> layout_;
  std::vector<Tensor> grad_buckets_, weight_buckets_, copy_buckets_;
  std::vector<Tensor> m_shards_, v_shards_;  // per bucket: this rank's shard of each moment
  std::vector<Tensor> copies_;               // per parameter: a view of its copy bucket
  kernels::MultiTensorPlan plan_;
  Tensor lr_tensor_, pending_clip_;
  int64_t step_ = 0;
};

}  // namespace coil::dist
