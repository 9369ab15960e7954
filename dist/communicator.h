// The NCCL communicator of a data-parallel run, with a watchdog: every wait on collective
// work polls NCCL's asynchronous error state and a deadline, so a rank that died or hangs
// makes the others fail with an error (after `timeout_s`) instead of waiting forever.
// Collectives run on a stream of their own, which waits on the compute stream through events.
#pragma once
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "dist/collectives.h"
#include "dist/distributed.h"

namespace coil::dist {

class Communicator : public Collectives {
 public:
  // The ranks meet (dist/rendezvous.h): each says hello with its config hash and its GPU's
  // identity, rank 0 checks them and hands out the NCCL unique id; an inconsistent launch is
  // an error on every rank.
  Communicator(const DistEnv& env, double timeout_s, uint64_t config_hash = 0);
  ~Communicator() override;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const override { return env_.rank; }
  int world_size() const override { return env_.world_size; }

  // On f32, bf16 or f64 tensors of this rank's GPU (dist/collectives.h).
  void all_reduce_mean_async(const Tensor& t) override;
  void all_reduce_sum_async(const Tensor& t) override;
  void reduce_scatter_mean_async(const Tensor& t) override;
  void all_gather_async(const Tensor& t) override;
  // No host sync.
  void join_compute_stream() override;
  // Host waits, with the watchdog, until the collectives and the compute stream's work queued
  // so far are done (`what` names the wait in the error). The trainer calls it where it syncs
  // anyway: once a step before reading the loss and the gradient norm, at checkpoints, at
  // evaluation and logging; a plain cudaStreamSynchronize there could wait forever on a
  // collective whose peer died.
  void wait(const char* what) override;
  // Every rank reaches this point, or the watchdog fires.
  void barrier(const char* what);
  // Sums a few host values over the ranks (a blocking collective through the watchdog).
  std::vector<double> sum_over_ranks(const std::vector<double>& values, const char* what);

 private:
  enum class Op { all_reduce_mean, all_reduce_sum, reduce_scatter_mean, all_gather };
  void collective(const Tensor& t, Op op);
  struct State;
  std::unique_ptr<State> state_;
  DistEnv env_;
  double timeout_s_;
};

}  // namespace coil::dist
