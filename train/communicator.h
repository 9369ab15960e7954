// The NCCL communicator of a data-parallel run, with a watchdog: every wait on collective
// work polls NCCL's asynchronous error state and a deadline, so a rank that died or hangs
// makes the others fail with an error (after `timeout_s`) instead of waiting forever.
// Collectives run on a stream of their own, which waits on the compute stream through events.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "train/distributed.h"

namespace coil::train {

class Communicator {
 public:
  // Rank 0 creates the NCCL unique id and hands it out over TCP (MASTER_ADDR/MASTER_PORT).
  Communicator(const DistEnv& env, double timeout_s);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }

  // Averages `t` (f32 or bf16, on this rank's GPU) across ranks in place. Ordered after all
  // work already queued on the compute stream; returns at once.
  void all_reduce_mean_async(const Tensor& t);
  // Sums in place, same ordering.
  void all_reduce_sum_async(const Tensor& t);
  // Makes the compute stream wait for the collectives queued so far (no host sync).
  void join_compute_stream();
  // Host waits, with the watchdog, until the collectives and the compute stream's work queued
  // so far are done (`what` names the wait in the error). The trainer calls it where it syncs
  // anyway: once a step before reading the loss and the gradient norm, at checkpoints, at
  // evaluation and logging; a plain cudaStreamSynchronize there could wait forever on a
  // collective whose peer died.
  void wait(const char* what);
  // Every rank reaches this point, or the watchdog fires.
  void barrier(const char* what);
  // Sums a few host values over the ranks (a blocking collective through the watchdog).
  std::vector<double> sum_over_ranks(const std::vector<double>& values, const char* what);

 private:
  void all_reduce(const Tensor& t, bool mean);
  struct State;
  std::unique_ptr<State> state_;
  DistEnv env_;
  double timeout_s_;
};

}  // namespace coil::train
