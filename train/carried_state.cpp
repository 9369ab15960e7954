#include "train/carried_state.h"

#include <map>

namespace coil::train {
namespace {

std::string name_of(size_t layer, const char* what) { return fmt::format("layers.{}.{}_state", layer, what); }

}  // namespace

CarriedState::CarriedState(const layers::LanguageModel& model, int64_t slots, int64_t micro_batch)
    : all_(model.zero_state(slots)), slots_(slots), micro_batch_(micro_batch) {}

const layers::ModelState& CarriedState::before(int64_t index, const data::Batch& b) {
  current_ = layers::state_rows(all_, index * micro_batch_, (index + 1) * micro_batch_);
  for (int64_t i = 0; i < micro_batch_; ++i)
    if (!b.continues.at(size_t(i))) layers::zero_state_row(current_, i);
  return current_;
}

void CarriedState::after(int64_t index, const layers::ModelState& final_state) {
  layers::ModelState rows = layers::state_rows(all_, index * micro_batch_, (index + 1) * micro_batch_);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].conv.defined()) rows[i].conv.copy_(final_state.at(i).conv);
    if (rows[i].ssm.defined()) rows[i].ssm.copy_(final_state.at(i).ssm);
  }
  current_.clear();
}

NamedTensors CarriedState::save() const {
  NamedTensors out;
  for (size_t i = 0; i < all_.size(); ++i)
    if (all_[i].ssm.defined()) {
      out.emplace_back(name_of(i, "conv"), all_[i].conv);
      out.emplace_back(name_of(i, "ssm"), all_[i].ssm);
    }
  return out;
}

void CarriedState::load(const NamedTensors& saved, const std::string& checkpoint) {
  std::map<std::string, Tensor> by_name(saved.begin(), saved.end());
  COIL_CHECK(!saved.empty(),
             "resume: train.carry_state is on but the checkpoint '{}' holds no carried state (it was written by a run "
             "without it); start a new run to carry state",
             checkpoint);
  for (size_t i = 0; i < all_.size(); ++i) {
    if (!all_[i].ssm.defined()) continue;
    for (auto [what, dst] : {std::pair{"conv", &all_[i].conv}, std::pair{"ssm", &all_[i].ssm}}) {
      auto it = by_name.find(name_of(i, what));
      COIL_CHECK(it != by_name.end(), "resume: the checkpoint '{}' has no carried state '{}' for Mamba layer {}",
                 checkpoint, name_of(i, what), i);
      const Tensor& t = it->second;
      COIL_CHECK(t.dim() >= 1 && t.size(0) == slots_,
                 "resume: the checkpoint '{}' carries the states of {} sequence slots, but this run has {} "
                 "(train.micro_batch x accumulation); each slot's state belongs to its own stream of windows, so they "
                 "cannot be split or merged: resume with the micro-batch and tokens_per_step the checkpoint was "
                 "written with, or start a new run",
                 checkpoint, t.dim() >= 1 ? t.size(0) : 0, slots_);
      COIL_CHECK(t.shape() == dst->shape(), "resume: the carried state '{}' of '{}' is {} but the model's is {}",
                 name_of(i, what), checkpoint, describe(t), describe(*dst));
      dst->copy_(t);
    }
  }
}

}  // namespace coil::train
