// Gradient clipping by global norm, outside the optimizer (AdamW::clip_grad_norm folds the
// coefficient into its update instead, saving a pass over the gradients).
#pragma once
#include <vector>

#include "autograd/variable.h"

namespace coil::optim {

// The L2 norm over the gradients of all params (f32 scalar on their device; computed in a
// deterministic two-pass reduction, no host sync). Parameters without a gradient count as 0.
Tensor global_grad_norm(const std::vector<autograd::Variable>& params);

// Scales every gradient in place by min(1, max_norm / (norm + 1e-6)) (the coefficient stays
// on the device) and returns the norm before clipping, like torch.nn.utils.clip_grad_norm_.
Tensor clip_grad_norm(const std::vector<autograd::Variable>& params, double max_norm);

}  // namespace coil::optim
