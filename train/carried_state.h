// Carried state (train.carry_state, truncated backpropagation through time; docs/MODELS.md):
// the Mamba layers' conv and SSM states of every sequence slot, carried detached from one
// window of the slot's stream to the next. The sequential sampler gives slot s the rows
// s = a * micro_batch + i (micro-step a, row i) of every step; a row that does not continue
// its slot's stream (the slot's run starts again, a new file, or, with data.reset_at_eot, a
// document starts at its first position) starts from zero. The states are part of the
// checkpoint (group /carry), so a resumed run continues exactly.
#pragma once
#include <string>

#include "data/loader.h"
#include "layers/model.h"
#include "train/checkpoint.h"

namespace coil::train {

class CarriedState {
 public:
  // Zero states for `slots` = micro_batch x accumulation rows, on the model's device.
  CarriedState(const layers::LanguageModel& model, int64_t slots, int64_t micro_batch);

  // The states before micro-step `index`, whose batch is b (views of its slots' rows; rows
  // that do not continue are zeroed first): SequenceContext::initial of its forward.
  const layers::ModelState& before(int64_t index, const data::Batch& b);
  // After micro-step `index`'s backward: its final states become its slots' states.
  void after(int64_t index, const layers::ModelState& final_state);

  // "layers.<i>.conv_state" (slots, d_conv - 1, d_inner), "layers.<i>.ssm_state" (slots,
  // d_inner, d_state) for each Mamba layer i.
  NamedTensors save() const;
  // Restores what save() wrote; a checkpoint with another number of slots (another
  // micro-batch or accumulation) or other shapes is an error that names them.
  void load(const NamedTensors& saved, const std::string& checkpoint);

 private:
  layers::ModelState all_;      // (slots, ...) per layer
  layers::ModelState current_;  // views of the rows of the micro-step in flight
  int64_t slots_, micro_batch_;
};

}  // namespace coil::train
