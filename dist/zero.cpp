#include "dist/zero.h"

#include <map>

#include "dist/grad_reducer.h"
#include "kernels/adamw.h"

namespace coil::dist {

int64_t padded_bucket_numel(int64_t numel, int world_size) {
  const int64_t unit = kShardAlign * world_size;
  return (numel + unit - 1) / unit * unit;
}

std::vector<BucketShard> shard_layout(const std::vector<Bucket>& buckets, const std::vector<int64_t>& param_numel,
                                      int world_size, int rank) {
  COIL_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "shard_layout: rank {} of a world of {}", rank,
             world_size);
  std::vector<BucketShard> out;
  for (const Bucket& bucket : buckets) {
    BucketShard s;
    s.params = bucket.params;
    int64_t offset = 0;
    for (size_t k : bucket.params) {
      COIL_CHECK(k < param_numel.size(), "shard_layout: parameter {} of {}", k, param_numel.size());
      s.param_offsets.push_back(offset);
      offset += param_numel[k];
    }
    s.numel = padded_bucket_numel(offset, world_size);
    s.shard_numel = s.numel / world_size;
    s.shard_begin = rank * s.shard_numel;
    const int64_t lo = s.shard_begin, hi = lo + s.shard_numel;
    for (size_t i = 0; i < bucket.params.size(); ++i) {
      const int64_t begin = s.param_offsets[i], end = begin + param_numel[bucket.params[i]];
      const int64_t a = std::max(begin, lo), b = std::min(end, hi);
      if (a < b) s.pieces.push_back({bucket.params[i], a - begin, a, b - a});
    }
    out.push_back(std::move(s));
  }
  return out;
}

namespace {
Tensor f32_view(const Tensor& flat, int64_t offset, const Shape& shape) {
  return flat.view_bytes(size_t(offset) * sizeof(float), shape, DType::f32);
}
}  // namespace

ShardedAdamW::ShardedAdamW(std::vector<std::string> names, std::vector<autograd::Variable> params,
                           std::vector<double> weight_decay, const GradReducer& reducer, Collectives& comm,
                           optim::AdamWOptions options, bool compute_copies)
    : names_(std::move(names)), params_(std::move(params)), comm_(comm), options_(options) {
  COIL_CHECK(!params_.empty() && names_.size() == params_.size() && weight_decay.size() == params_.size(),
             "ZeRO-1: {} parameters, {} names, {} weight decays", params_.size(), names_.size(), weight_decay.size());
  device_ = params_[0].device();
  std::vector<int64_t> numel;
  for (size_t k = 0; k < params_.size(); ++k) {
    COIL_CHECK(params_[k].dtype() == DType::f32 && params_[k].device() == device_,
               "ZeRO-1: parameter '{}' is {}; the weights are f32 on {}", names_[k], describe(params_[k].value()),
               device_.str());
    numel.push_back(params_[k].numel());
  }
  layout_ = shard_layout(reducer.buckets(), numel, comm.world_size(), comm.rank());
  copies_.resize(params_.size());
  std::vector<kernels::AdamWSlot> slots;
  for (size_t b = 0; b < layout_.size(); ++b) {
    const BucketShard& s = layout_[b];
    const std::vector<size_t>& members = s.params;
    Tensor grads = reducer.bucket_buffer(b);
    COIL_CHECK(grads.dtype() == DType::f32 && grads.numel() == s.numel,
               "ZeRO-1: gradient bucket {} is {}, the shards need f32[{}] (a reducer built for {} shards)", b,
               describe(grads), s.numel, comm.world_size());
    // The weights move into a flat bucket laid out like the gradients.
    Tensor weights = Tensor::zeros({s.numel}, DType::f32, device_);
    for (size_t i = 0; i < members.size(); ++i) {
      autograd::Variable& p = params_[members[i]];
      Tensor view = f32_view(weights, s.param_offsets[i], p.shape());
      view.copy_(p.value());
      p.impl()->value = view;
    }
    Tensor m = Tensor::zeros({s.shard_numel}, DType::f32, device_),
           v = Tensor::zeros({s.shard_numel}, DType::f32, device_);
    for (const ShardPiece& piece : s.pieces) {
      kernels::AdamWSlot slot;
      slot.param = f32_view(weights, piece.bucket_offset, {piece.numel});
      slot.grad = f32_view(grads, piece.bucket_offset, {piece.numel});
      slot.m = f32_view(m, piece.bucket_offset - s.shard_begin, {piece.numel});
      slot.v = f32_view(v, piece.bucket_offset - s.shard_begin, {piece.numel});
      slot.weight_decay = weight_decay[piece.param];
      slots.push_back(slot);
    }
    if (compute_copies) {
      Tensor copy = Tensor::empty({s.numel}, DType::bf16, device_);
      for (size_t i = 0; i < members.size(); ++i)
        copies_[members[i]] = copy.view_bytes(size_t(s.param_offsets[i]) * 2, params_[members[i]].shape(), DType::bf16);
      copy_buckets_.push_back(copy);
    }
    grad_buckets_.push_back(grads);
    weight_buckets_.push_back(weights);
    m_shards_.push_back(m);
    v_shards_.push_back(v);
  }
  plan_ = kernels::make_multi_tensor_plan(std::move(slots));
  lr_tensor_ = Tensor::full({}, options_.lr, DType::f32, device_);
  refresh_compute_copies();
}

Tensor ShardedAdamW::clip_grad_norm(double max_norm) {
  Tensor sumsq = plan_.num_chunks > 0 ? kernels::grad_sumsq(plan_) : Tensor::zeros({}, DType::f64, device_);
  comm_.all_reduce_sum_async(sumsq);
  comm_.join_compute_stream();
  kernels::GradNorm n = kernels::norm_and_clip(sumsq, max_norm);
  pending_clip_ = max_norm > 0 ? n.clip : Tensor();
  return n.norm;
}

void ShardedAdamW::step() {
  ++step_;
  if (plan_.num_chunks > 0)
    kernels::adamw_step(plan_, lr_tensor_, pending_clip_, {options_.beta1, options_.beta2, options_.eps}, step_);
  pending_clip_ = Tensor();
  for (const Tensor& w : weight_buckets_) comm_.all_gather_async(w);
  comm_.join_compute_stream();
  refresh_compute_copies();
}

void ShardedAdamW::zero_grad() {
  for (Tensor& g : grad_buckets_) g.zero_();
}

void ShardedAdamW::set_lr(double lr) {
  COIL_CHECK(lr >= 0 && std::isfinite(lr), "AdamW: the learning rate must be finite and >= 0, got {}", lr);
  options_.lr = lr;
  lr_tensor_.fill_(lr);
}

void ShardedAdamW::refresh_compute_copies() {
  for (size_t b = 0; b < copy_buckets_.size(); ++b) copy_buckets_[b].copy_(weight_buckets_[b]);
}

std::vector<std::pair<std::string, Tensor>> ShardedAdamW::state_tensors() {
  std::vector<std::pair<std::string, Tensor>> out;
  for (auto [prefix, shards] : {std::pair<std::string, const std::vector<Tensor>*>{"exp_avg/", &m_shards_},
                                {"exp_avg_sq/", &v_shards_}}) {
    for (size_t b = 0; b < layout_.size(); ++b) {
      const BucketShard& s = layout_[b];
      Tensor whole = Tensor::zeros({s.numel}, DType::f32, device_);
      whole.narrow0(s.shard_begin, s.shard_begin + s.shard_numel).copy_((*shards)[b]);
      comm_.all_gather_async(whole);
      comm_.join_compute_stream();
      comm_.wait("gathering the optimizer state");
      for (size_t i = 0; i < s.params.size(); ++i) {
        const size_t k = s.params[i];
        out.emplace_back(prefix + names_[k], f32_view(whole, s.param_offsets[i], params_[k].shape()).to(Device::cpu()));
      }
    }
  }
  return out;
}

void ShardedAdamW::load_state_tensors(const std::vector<std::pair<std::string, Tensor>>& state) {
  std::map<std::string, Tensor> by_name(state.begin(), state.end());
  // Every name is checked on every rank (not only those of its shards), so all ranks agree.
  for (size_t k = 0; k < params_.size(); ++k)
    for (const char* prefix : {"exp_avg/", "exp_avg_sq/"}) {
      auto it = by_name.find(prefix + names_[k]);
      COIL_CHECK(it != by_name.end(), "AdamW: the optimizer state has no '{}{}'", prefix, names_[k]);
      COIL_CHECK(it->second.shape() == params_[k].shape(), "AdamW: '{}{}' is {} in the state but {} here", prefix,
                 names_[k], describe(it->second), describe(params_[k].value()));
    }
  for (size_t b = 0; b < layout_.size(); ++b) {
    const BucketShard& s = layout_[b];
    for (const ShardPiece& piece : s.pieces)
      for (auto [prefix, shard] : {std::pair<std::string, Tensor>{"exp_avg/", m_shards_[b]}, {"exp_avg_sq/", v_shards_[b]}}) {
        const Tensor& whole = by_name.at(prefix + names_[piece.param]);
        Tensor src = whole.reshape({whole.numel()}).narrow0(piece.param_offset, piece.param_offset + piece.numel);
        f32_view(shard, piece.bucket_offset - s.shard_begin, {piece.numel}).copy_(src);
      }
  }
}

size_t ShardedAdamW::state_bytes() const {
  size_t bytes = 0;
  for (const BucketShard& s : layout_) bytes += 2 * size_t(s.shard_numel) * sizeof(float);
  return bytes;
}

}  // namespace coil::dist
