#include "dist/communicator.h"

#include <chrono>
#include <cstring>
#include <exception>
#include <thread>

#include <unistd.h>

#include "core/cuda.h"
#include "dist/rendezvous.h"

#if defined(COIL_CUDA) && defined(COIL_NCCL)
#include <nccl.h>
#endif

namespace coil::dist {

#if defined(COIL_CUDA) && defined(COIL_NCCL)

struct Communicator::State {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t compute_ready = nullptr;
  cudaEvent_t comm_done = nullptr;
};

namespace {
void check_nccl(ncclResult_t r, const char* call, int rank) {
  if (r != ncclSuccess && r != ncclInProgress)
    fail("NCCL {} failed on rank {}: {} ({})", call, rank, ncclGetErrorString(r), ncclGetLastError(nullptr));
}

// Polls until `done` or the deadline, checking NCCL's asynchronous error state meanwhile. On
// an error or at the deadline it aborts the communicator (which also ends its kernels that
// wait for a peer) and forgets it, so the destructor does not touch it again.
template <class Done>
void watch(ncclComm_t& comm, int rank, double timeout_s, const char* what, Done done) {
  COIL_CHECK(comm, "rank {}: {} on a communicator that was aborted after an earlier error", rank, what);
  auto start = std::chrono::steady_clock::now();
  while (!done()) {
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm, &async);
    if (async != ncclSuccess && async != ncclInProgress) {
      ncclCommAbort(comm);
      comm = nullptr;
      fail("NCCL error on rank {} during {}: {}; another rank may have died", rank, what,
           ncclGetErrorString(async));
    }
    double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > timeout_s) {
      ncclCommAbort(comm);
      comm = nullptr;
      fail("rank {} waited {:.0f} s for {} (train.dist_timeout_s): another rank died or hangs", rank,
           waited, what);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

// A non-blocking communicator may answer a call with ncclInProgress before the call has queued
// its work on the stream (connection set-up, say); nothing may rely on the stream until the
// communicator's state leaves ncclInProgress, so this polls for that, with the watchdog.
void settle(ncclComm_t& comm, int rank, double timeout_s, const char* what) {
  watch(comm, rank, timeout_s, what, [&] {
    ncclResult_t r = ncclInProgress;
    ncclCommGetAsyncError(comm, &r);
    return r == ncclSuccess;
  });
}

// The identity of the current GPU, unique across machines: its UUID.
std::string gpu_identity() {
  cudaDeviceProp prop{};
  COIL_CUDA_CHECK(cudaGetDeviceProperties(&prop, cuda::current_device()));
  std::string id = "GPU-";
  for (int i = 0; i < 16; ++i) {
    id += fmt::format("{:02x}", uint8_t(prop.uuid.bytes[i]));
    if (i == 3 || i == 5 || i == 7 || i == 9) id += '-';
  }
  return id;
}

std::string host_name() {
  char name[256] = {0};
  ::gethostname(name, sizeof name - 1);
  return name;
}

// True once every operation queued on `stream` is done; raises on a CUDA error.
bool stream_idle(cudaStream_t stream) {
  cudaError_t e = cudaStreamQuery(stream);
  if (e != cudaErrorNotReady) COIL_CUDA_CHECK(e);
  return e == cudaSuccess;
}
}  // namespace

Communicator::Communicator(const DistEnv& env, double timeout_s, uint64_t config_hash)
    : state_(std::make_unique<State>()), env_(env), timeout_s_(timeout_s) {
  ncclUniqueId id;
  std::vector<uint8_t> blob(sizeof id);
  if (env.rank == 0) {
    check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", env.rank);
    std::memcpy(blob.data(), &id, sizeof id);
  }
  Hello hello;
  hello.rank = env.rank;
  hello.world_size = env.world_size;
  hello.local_rank = env.local_rank;
  hello.config_hash = config_hash;
  hello.host = host_name();
  hello.device = gpu_identity();
  blob = rendezvous(env, hello, blob, timeout_s);
  COIL_CHECK(blob.size() == sizeof id, "rendezvous: got {} bytes for the NCCL id, expected {}", blob.size(),
             sizeof id);
  std::memcpy(&id, blob.data(), sizeof id);

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // calls return at once; the watchdog polls their completion
  check_nccl(ncclCommInitRankConfig(&state_->comm, env.world_size, id, env.rank, &config),
             "ncclCommInitRankConfig", env.rank);
  settle(state_->comm, env.rank, timeout_s, "communicator start-up");
  COIL_CUDA_CHECK(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking));
  COIL_CUDA_CHECK(cudaEventCreateWithFlags(&state_->compute_ready, cudaEventDisableTiming));
  COIL_CUDA_CHECK(cudaEventCreateWithFlags(&state_->comm_done, cudaEventDisableTiming));
}

// While an error unwinds the stack, collectives may still wait for peers; ncclCommDestroy
// would wait with them, so the communicator is aborted instead.
Communicator::~Communicator() {
  if (state_->comm) (std::uncaught_exceptions() > 0 ? ncclCommAbort : ncclCommDestroy)(state_->comm);
  if (state_->stream) cudaStreamDestroy(state_->stream);
  if (state_->compute_ready) cudaEventDestroy(state_->compute_ready);
  if (state_->comm_done) cudaEventDestroy(state_->comm_done);
}

// In place, on the communication stream after the compute stream's queued work. Reduce-scatter
// and all-gather work on shard `rank` of the buffer (NCCL's in-place forms).
void Communicator::collective(const Tensor& t, Op op) {
  State& s = *state_;
  const int rank = env_.rank, world = env_.world_size;
  COIL_CHECK(t.device().is_cuda(), "collective: {} is not on a GPU", describe(t));
  COIL_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16 || t.dtype() == DType::f64,
             "collective: {} is not f32, bf16 or f64", describe(t));
  const bool sharded = op == Op::reduce_scatter_mean || op == Op::all_gather;
  COIL_CHECK(!sharded || t.numel() % world == 0, "collective: {} does not split into {} equal shards", describe(t),
             world);
  ncclDataType_t type = t.dtype() == DType::f32 ? ncclFloat32 : t.dtype() == DType::bf16 ? ncclBfloat16 : ncclFloat64;
  COIL_CUDA_CHECK(cudaEventRecord(s.compute_ready, cuda::compute_stream()));
  COIL_CUDA_CHECK(cudaStreamWaitEvent(s.stream, s.compute_ready, 0));
  const size_t shard = size_t(t.numel() / world);
  char* own = static_cast<char*>(t.raw()) + size_t(rank) * shard * dtype_size(t.dtype());
  ncclResult_t r = ncclSuccess;
  const char* name = "";
  switch (op) {
    case Op::all_reduce_mean:
    case Op::all_reduce_sum:
      name = "ncclAllReduce";
      r = ncclAllReduce(t.raw(), t.raw(), size_t(t.numel()), type, op == Op::all_reduce_mean ? ncclAvg : ncclSum,
                        s.comm, s.stream);
      break;
    case Op::reduce_scatter_mean:
      name = "ncclReduceScatter";
      r = ncclReduceScatter(t.raw(), own, shard, type, ncclAvg, s.comm, s.stream);
      break;
    case Op::all_gather:
      name = "ncclAllGather";
      r = ncclAllGather(own, t.raw(), shard, type, s.comm, s.stream);
      break;
  }
  check_nccl(r, name, rank);
  if (r == ncclInProgress) settle(s.comm, rank, timeout_s_, "queueing a collective");
}

void Communicator::all_reduce_mean_async(const Tensor& t) { collective(t, Op::all_reduce_mean); }
void Communicator::all_reduce_sum_async(const Tensor& t) { collective(t, Op::all_reduce_sum); }
void Communicator::reduce_scatter_mean_async(const Tensor& t) { collective(t, Op::reduce_scatter_mean); }
void Communicator::all_gather_async(const Tensor& t) { collective(t, Op::all_gather); }

void Communicator::join_compute_stream() {
  COIL_CUDA_CHECK(cudaEventRecord(state_->comm_done, state_->stream));
  COIL_CUDA_CHECK(cudaStreamWaitEvent(cuda::compute_stream(), state_->comm_done, 0));
}

void Communicator::wait(const char* what) {
  watch(state_->comm, env_.rank, timeout_s_, what,
        [&] { return stream_idle(state_->stream) && stream_idle(cuda::compute_stream()); });
}

void Communicator::barrier(const char* what) {
  Tensor token = Tensor::zeros({1}, DType::f32, Device::cuda(cuda::current_device()));
  all_reduce_sum_async(token);
  wait(what);
}

std::vector<double> Communicator::sum_over_ranks(const std::vector<double>& values, const char* what) {
  Tensor t = Tensor::from_vector(values, {int64_t(values.size())}).to(Device::cuda(cuda::current_device()));
  all_reduce_sum_async(t);
  wait(what);
  return t.to_vector<double>();
}

#else

struct Communicator::State {};

Communicator::Communicator(const DistEnv& env, double timeout_s, uint64_t) : env_(env), timeout_s_(timeout_s) {
  COIL_CHECK(env.world_size == 1, "data parallel training over {} ranks needs coil built with CUDA and NCCL",
             env.world_size);
}
Communicator::~Communicator() = default;
void Communicator::collective(const Tensor&, Op) {}
void Communicator::all_reduce_mean_async(const Tensor&) {}
void Communicator::all_reduce_sum_async(const Tensor&) {}
void Communicator::reduce_scatter_mean_async(const Tensor&) {}
void Communicator::all_gather_async(const Tensor&) {}
void Communicator::join_compute_stream() {}
void Communicator::wait(const char*) {}
void Communicator::barrier(const char*) {}
std::vector<double> Communicator::sum_over_ranks(const std::vector<double>& values, const char*) { return values; }

#endif

}  // namespace coil::dist
