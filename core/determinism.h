// Deterministic mode, a process-wide switch like torch.use_deterministic_algorithms: when on,
// every op whose fast GPU path reduces with floating-point atomics (today the selective scan's
// dB and dC over channel tiles) takes its fixed-order path instead, so that gradients repeat
// bit for bit run after run and a resumed run continues exactly as the uninterrupted one.
// Off by default; the trainer sets it from train.deterministic.
#pragma once

namespace coil {

bool deterministic();
void set_deterministic(bool on);

}  // namespace coil
