#include "train/trainer.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/variable.h"
#include "core/allocator.h"
#include "core/cuda.h"
#include "core/determinism.h"
#include "core/version.h"
#include "data/loader.h"
#include "dist/communicator.h"
#include "dist/distributed.h"
#include "dist/grad_reducer.h"
#include "dist/process.h"
#include "kernels/accumulate.h"
#include "kernels/elementwise.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "layers/model.h"
#include "layers/model_facts.h"
#include "optim/schedule.h"
#include "core/atomic_file.h"
#include "train/carried_state.h"
#include "train/checkpoint.h"
#include "train/hf_interop.h"
#include "train/info.h"
#include "train/metrics_log.h"
#include "train/optimizer.h"
#include "train/tensorboard.h"

namespace coil::train {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// ---- signals: the first one asks for a checkpoint at the next step boundary, a second one
// exits at once ----
std::atomic<int> g_signal{0};

extern "C" void on_signal(int sig) {
  if (g_signal.exchange(sig) != 0) {
    const char msg[] = "\ncoil: second signal, exiting now without saving\n";
    ssize_t ignored = ::write(2, msg, sizeof(msg) - 1);
    (void)ignored;
    std::_Exit(128 + sig);
  }
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "-";
  int64_t t = int64_t(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

std::string format_count(double v) {
  if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

// JSON numbers: shortest round trip; non-finite values as null.
std::string jnum(double v) { return std::isfinite(v) ? fmt::format("{}", v) : "null"; }

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

size_t host_rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * size_t(sysconf(_SC_PAGESIZE));
}

// With several ranks, each uses the GPU of its local rank (dist/distributed.h: choose_gpu).
Device rank_device(const std::string& name, const dist::DistEnv& env) {
  if (env.world_size == 1) return resolve_device(name);
  COIL_CHECK(name == "auto" || name == "cuda",
             "train: {} ranks were launched ({}); each uses the GPU of its local rank, so train.device must be auto or "
             "cuda, not {}",
             env.world_size, env.launcher, name);
  COIL_CHECK(cuda_available(), "train: {} ranks were launched ({}), but no GPU is usable: {}", env.world_size,
             env.launcher, cuda_unavailable_reason());
  return Device::cuda(dist::choose_gpu(env.local_rank, cuda_device_count(), env.launcher));
}

// The ranks must run the same resolved config: its hash goes into the rendezvous' hello.
uint64_t config_hash(const Config& c) {
  Fnv1a h;
  std::string text = to_yaml(c);
  h.update(text.data(), text.size());
  return h.h;
}

// The learning rate at `step` (0-based): linear warmup from lr/warmup to lr, then cosine or
// linear decay to min_lr at the last step, or constant.
optim::Schedule make_schedule(const Config& c) {
  optim::Schedule s;
  s.kind = optim::parse_schedule_kind(c.optim.schedule);
  s.lr = c.optim.lr;
  s.min_lr = c.optim.min_lr;
  s.warmup_steps = c.warmup_steps();
  s.total_steps = c.train.steps;
  optim::validate(s);
  return s;
}

Checkpoint make_checkpoint(const layers::LanguageModel& model, const Optimizer& opt, const TrainState& state) {
  Checkpoint c;
  c.state = state;
  std::map<const layers::Parameter*, std::string> first_name;
  for (auto& [name, p] : model.named_parameters()) {
    c.params.emplace_back(name, p->value());
    first_name[p.get()] = name;
  }
  for (auto& [name, p] : model.named_parameters_with_aliases()) {
    auto it = first_name.find(p.get());
    if (it != first_name.end() && it->second != name) c.aliases.emplace_back(name, it->second);
  }
  c.optimizer = opt.state();
  return c;
}

// What one step did: its loss (the mean over its targets) and gradient norm; a non-finite one
// was skipped.
struct StepOutcome {
  double lr = 0, loss = 0, gnorm = 0;
  bool finite = true;
};

// The steps one log line averages: those since the previous line.
struct LogWindow {
  Clock::time_point start;
  int64_t tokens_at_start = 0, steps = 0;
  double loss_sum = 0, gnorm_sum = 0;
  int64_t loss_count = 0, gnorm_count = 0;

  void add(const StepOutcome& s) {
    if (s.finite) {
      gnorm_sum += s.gnorm;
      gnorm_count += 1;
      if (std::isfinite(s.loss)) loss_sum += s.loss, loss_count += 1;
    }
    steps += 1;
  }
  void restart(Clock::time_point now, int64_t tokens) { *this = LogWindow{now, tokens}; }
};

// One training run, in the order it happens:
//   set-up    set_up_device, inspect_run_directory, build, restore, open_run_directory, announce
//   per step  step (micro-batches, backward, the one host sync, AdamW), then log, evaluate
//             and save when they are due
//   stop      finish: on a stop request a checkpoint and how to continue; at the end a last
//             evaluation and checkpoint.
class Trainer {
 public:
  Trainer(Config config, const TrainOptions& options)
      : config_(std::move(config)), options_(options), call_start_(Clock::now()), env_(dist::detect_dist_env()) {
    print_ = options.print ? options.print : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  }

  TrainResult run() {
    set_up_device();
    inspect_run_directory();
    build();
    restore();
    if (resuming_ && state_.step >= config_.train.steps) {  // nothing to do: the directory stays as it is
      say(fmt::format("{} is finished already: its checkpoint is at step {} and train.steps is {} (to train further: "
                      "coil resume {} --set train.steps=N)",
                      run_dir_, state_.step, config_.train.steps, run_dir_));
      return result_;
    }
    open_run_directory();
    announce();
    g_signal = 0;
    dist::SignalHandlerScope signals(options_.install_signal_handlers ? on_signal : nullptr);
    val_batches_ = eval_batches(*loader_, config_.eval.batches, config_.train.micro_batch);
    t_start_ = Clock::now();
    window_.restart(t_start_, state_.tokens_seen);
    steps_this_call_start_ = state_.step;
    if (comm_) stop_flag_ = Tensor::zeros({1}, DType::f32, device_);
    while (state_.step < config_.train.steps) {
      if (stop_now()) break;
      window_.add(step());
      const bool last = state_.step == config_.train.steps;
      if (state_.step % config_.log.every == 0 || last) log();
      if (config_.eval.every > 0 && state_.step % config_.eval.every == 0 && !last) evaluate();
      if (config_.checkpoint.every > 0 && state_.step % config_.checkpoint.every == 0 && !last) save("periodic");
    }
    return finish();
  }

 private:
  void say(const std::string& s) const {  // rank 0 speaks for all
    if (!options_.quiet && env_.rank == 0) print_(s);
  }
  void warn(const std::string& s) const { say("warning: " + s); }

  // ---- set-up ----

  // The device of this rank, the config resolved for it, and (several ranks) the communicator.
  void set_up_device() {
    COIL_CHECK(!config_.train.carry_state || env_.world_size == 1,
               "train.carry_state with {} ranks ({}): carried states belong to the sequence slots of one process and "
               "are saved by it; rank 0 writes the checkpoints alone, so the other ranks' states would be lost. "
               "Carried state runs on one process (one GPU) for now",
               env_.world_size, env_.launcher);
    device_ = rank_device(config_.train.device, env_);
    if (device_.is_cuda()) cuda::set_device(device_.index);  // before anything is allocated
    resolve_for_device(config_, device_, env_.world_size);
    set_deterministic(config_.train.deterministic);
    // Several ranks: rank 0 hands out the NCCL id over TCP; every later wait on collectives goes
    // through the communicator's watchdog (train.dist_timeout_s).
    if (env_.world_size > 1)
      comm_ = std::make_unique<dist::Communicator>(env_, config_.train.dist_timeout_s, config_hash(config_));
    if (!env_.note.empty()) say("note: " + env_.note);
    zero_ = comm_ && config_.train.zero == 1;
    if (config_.train.zero == 1 && !comm_)
      say("note: train.zero 1 shards the optimizer over several ranks; one rank keeps it whole");
    run_dir_ = config_.run_dir();
    config_path_ = (fs::path(run_dir_) / "config.yaml").string();
  }

  // The run directory: new, the same run (continue from its latest checkpoint), or another run
  // (an error). Nothing is written into it before every check has passed (open_run_directory).
  void inspect_run_directory() {
    auto warn = [&](const std::string& s) { this->warn(s); };
    if (fs::exists(config_path_)) {
      Config existing = load_config(config_path_);
      auto diffs = config_differences(existing, config_, true);
      if (!diffs.empty()) {
        std::string list;
        for (auto& d : diffs) list += "\n  " + d;
        fail("train: the run directory '{}' holds a different run (its config.yaml differs in:{}\n); choose another "
             "run.name or run.dir, or delete the directory",
             run_dir_, list);
      }
      auto same_model = [&](const Checkpoint& c) { check_same_model(c, config_.model.config); };
      bool has_ckpt = load_latest(run_dir_, ckpt_, &ckpt_path_, warn, same_model, &passed_over_);
      if (options_.resume && !has_ckpt) fail("resume: '{}' has no usable checkpoint to resume from", run_dir_);
      if (has_ckpt && (options_.resume || options_.allow_resume)) {
        resuming_ = true;
        for (auto& d : config_differences(existing, config_, false))
          say("note: config changed since the checkpoint: " + d);
        note_schedule_change(existing);
      }
    } else if (options_.resume) {
      fail("resume: '{}' is not a run directory (no config.yaml)", run_dir_);
    }
    // model.init_from, read and checked before the run directory is written
    if (!resuming_ && !config_.model.init_from.empty())
      initial_ = initial_weights(config_.model.init_from, config_.model.config, warn);
  }

  // A new train.steps recomputes the schedule: say so when the next step's rate changes.
  void note_schedule_change(const Config& existing) {
    const int64_t next = ckpt_.state.step;
    const double old_lr = optim::learning_rate(make_schedule(existing), next);
    const double new_lr = optim::learning_rate(make_schedule(config_), next);
    if (existing.train.steps != config_.train.steps && next < config_.train.steps && old_lr != new_lr)
      schedule_note_ = fmt::format(
          "note: train.steps changed from {} to {}: the learning-rate schedule is recomputed for {} steps, so "
          "step {} runs at lr {:.4e} (the {}-step schedule had {:.4e})",
          existing.train.steps, config_.train.steps, config_.train.steps, next + 1, new_lr, existing.train.steps,
          old_lr);
  }

  // The model (on its device), the gradient reducer (several ranks), the optimizer, the
  // schedule, the data and the carried states.
  void build() {
    model_ = std::make_unique<layers::LanguageModel>(config_.model.config, uint64_t(config_.train.seed));
    if (!initial_.empty()) {
      load_parameters(*model_, initial_);
      say(fmt::format("starting from the weights of {} (model.init_from)", config_.model.init_from));
    }
    model_->to(device_);
    model_->train();
    // Several ranks: the gradients live in the reducer's buckets (the optimizer adopts them) and
    // each complete bucket is averaged over the ranks while backward goes on.
    // With ZeRO-1 each bucket is reduce-scattered instead, and the optimizer shards its moments.
    if (comm_) {
      std::vector<autograd::Variable> params;
      for (auto& [name, p] : model_->named_parameters()) params.push_back(p->var);
      reducer_ = std::make_unique<dist::GradReducer>(
          params, size_t(config_.train.bucket_mb * double(1 << 20)),
          [c = comm_.get(), zero = zero_](const Tensor& bucket) {
            zero ? c->reduce_scatter_mean_async(bucket) : c->all_reduce_mean_async(bucket);
          },
          zero_ ? env_.world_size : 0);
    }
    opt_ = std::make_unique<Optimizer>(*model_, config_.optim,
                                       zero_ ? ZeroSharding{reducer_.get(), comm_.get()} : ZeroSharding{});
    schedule_ = make_schedule(config_);
    loader_ = std::make_unique<data::DataLoader>(data_options(config_, env_.rank, env_.world_size));
    accum_ = config_.grad_accum(env_.world_size);
    tokens_per_step_ = accum_ * config_.train.micro_batch * config_.train.seq_len * env_.world_size;
    if (config_.train.carry_state)
      carried_ = std::make_unique<CarriedState>(*model_, accum_ * config_.train.micro_batch, config_.train.micro_batch);
  }

  // The run's state, from the checkpoint when continuing.
  void restore() {
    state_.config_yaml = to_yaml(config_);
    state_.rng_seed = uint64_t(config_.train.seed);
    state_.world_size = env_.world_size;
    if (resuming_) {
      load_parameters(*model_, ckpt_.params);
      opt_->load_state(ckpt_.optimizer);
      if (carried_) carried_->load(ckpt_.carried, ckpt_path_);
      loader_->set_state({ckpt_.state.sampler_seed, ckpt_.state.sampler_examples});
      state_ = ckpt_.state;
      state_.config_yaml = to_yaml(config_);
      state_.world_size = env_.world_size;
      say(fmt::format("resuming {} from {} (step {}, {} tokens)", run_dir_, fs::path(ckpt_path_).filename().string(),
                      state_.step, format_count(double(state_.tokens_seen))));
      if (ckpt_.state.world_size != env_.world_size)
        say(fmt::format("note: the checkpoint was written by {} rank(s) and this run has {}: the parameters and the "
                        "optimizer state continue as they are, but the data order changes (the stream goes on from "
                        "example {}, split over the ranks and micro-batches differently), so the run is not the one "
                        "{} rank(s) would have made",
                        ckpt_.state.world_size, env_.world_size, loader_->state().examples_drawn,
                        ckpt_.state.world_size));
    }
    result_.run_dir = run_dir_;
    result_.start_step = state_.step;
    result_.final_step = state_.step;
  }

  // Every check has passed: the run directory is written from here on (rank 0).
  void open_run_directory() {
    if (!schedule_note_.empty()) say(schedule_note_);
    if (env_.rank != 0) return;
    for (auto& line : set_aside(passed_over_)) warn(line);
    fs::create_directories(run_dir_);
    replace_file(config_path_, [&](std::ostream& out) { out << to_yaml(config_); });
    metrics_ = std::make_unique<MetricsLog>((fs::path(run_dir_) / "metrics.jsonl").string(), state_.step);
    if (config_.log.tensorboard) tb_ = std::make_unique<TensorBoardWriter>(run_dir_);
  }

  void announce() {
    flops_per_token_ = model_->flops_per_token(config_.train.seq_len);
    peak_flops_ = peak_flops(device_, config_.train.dtype);
    say(fmt::format("run {} -> {}", config_.run.name, run_dir_));
    say(fmt::format("model {}: {} parameters, {} FLOPs/token; {} {}", config_.model.preset,
                    format_count(double(model_->num_parameters())), format_count(flops_per_token_), device_.str(),
                    config_.train.dtype));
    say(fmt::format("data: {}", loader_->describe()));
    if (zero_)
      say(fmt::format("ZeRO-1: AdamW's moments sharded over {} ranks: {} per rank", env_.world_size,
                      format_bytes(opt_->state_bytes())));
    say(fmt::format("{} steps of {} tokens ({} x {} x {} accumulation{})", config_.train.steps, tokens_per_step_,
                    config_.train.micro_batch, config_.train.seq_len, accum_,
                    env_.world_size > 1 ? fmt::format(" x {} ranks", env_.world_size) : ""));
  }

  // ---- a step ----

  // A signal, stop_after_steps or the time limit, seen on this rank, asks to stop once
  // `steps_done` are done.
  bool out_of_time() const { return options_.time_limit_s > 0 && seconds_since(call_start_) >= options_.time_limit_s; }
  bool stop_requested(int64_t steps_done) const {
    return g_signal.load() != 0 || (steps_done > steps_this_call_start_ && out_of_time()) ||
           (options_.stop_after_steps >= 0 && steps_done - steps_this_call_start_ >= options_.stop_after_steps);
  }
  // Before a step: stop here? Several ranks stop after the same step: the ranks' requests were
  // summed in the previous step (stop_agreed_).
  bool stop_now() {
    if (!stop_agreed_ && (comm_ || !stop_requested(state_.step))) return false;
    result_.interrupted = true;
    result_.signal = g_signal.load();
    result_.time_limit_reached = !result_.signal && state_.step > steps_this_call_start_ && out_of_time();
    return true;
  }

  // One optimizer step: the step's micro-batches, forward and backward of each, (several
  // ranks) the gradients averaged, the global norm clipped, the one host sync, AdamW.
  StepOutcome step() {
    const int64_t step = state_.step;
    StepOutcome s;
    s.lr = optim::learning_rate(schedule_, step);
    Tensor loss_dev = accumulate_gradients();
    if (comm_) {
      // Several ranks must stop after the same step: each step sums the ranks' requests (a
      // flag all-reduced with the gradients, read in the step's sync).
      stop_flag_.fill_(stop_requested(step + 1) ? 1.0 : 0.0);
      comm_->all_reduce_sum_async(stop_flag_);
      comm_->join_compute_stream();  // the norm and the optimizer see the averaged gradients
    }
    Tensor gnorm_dev = opt_->clip_grad_norm(config_.optim.grad_clip);  // global: after the reduction
    // The one host sync of the step (docs/ARCHITECTURE.md, "Host synchronization"): with
    // several ranks through the watchdog; then bad token ids raise their error, and the loss,
    // the norm (and the stop flag) are read.
    if (comm_) comm_->wait("the step's gradient all-reduce");
    if (device_.is_cuda()) {
      kernels::check_embedding_errors();
      kernels::check_cross_entropy_targets(device_);
    }
    s.loss = loss_dev.defined() ? loss_dev.item() : 0.0;
    s.gnorm = gnorm_dev.item();
    if (comm_) stop_agreed_ = stop_flag_.item() > 0;
    // Several ranks decide on the norm alone: it comes from the averaged gradients, so all
    // skip the same steps (each rank's loss is its own until the log averages it).
    s.finite = std::isfinite(s.gnorm) && (comm_ || std::isfinite(s.loss));
    if (s.finite)
      opt_->step(s.lr);
    else
      skip_step(step, s);
    state_.step += 1;
    state_.tokens_seen += tokens_per_step_;
    state_.last_lr = s.lr;
    result_.losses.push_back(s.finite ? s.loss : NAN);
    if (options_.on_step) options_.on_step(state_.step, s.finite ? s.loss : NAN);
    return s;
  }

  // Draws the step's micro-batches first: each gradient is weighted by its share of targets,
  // so the step's gradient is that of the mean loss over all its targets. Several ranks
  // average their gradients, each weighted by its own targets: the same thing when every
  // rank's batch holds as many targets (token windows: all positions; synthetic tasks: a fixed
  // number per example). Returns the step's loss, summed on the device (no sync per
  // micro-batch).
  Tensor accumulate_gradients() {
    std::vector<data::Batch> batches;
    int64_t step_targets = 0;
    for (int64_t a = 0; a < accum_; ++a) {
      batches.push_back(loader_->next_train(config_.train.micro_batch));
      step_targets += batches.back().target_count();
    }
    opt_->zero_grad();
    Tensor loss_dev;
    for (int64_t a = 0; a < accum_; ++a) {
      const data::Batch& b = batches[size_t(a)];
      // Only the last micro-step's backward all-reduces; the earlier ones accumulate locally.
      if (reducer_) reducer_->set_reduce_this_backward(a == accum_ - 1);
      int64_t count = b.target_count();
      if (count > 0) {
        Tensor inputs = b.inputs.to(device_), targets = b.targets.to(device_);
        layers::SequenceContext context = documents_of(b, device_);
        layers::ModelState final_state;
        if (carried_) {
          context.initial = &carried_->before(a, b);
          context.final = &final_state;
        }
        autograd::Variable loss = model_->loss(inputs, targets, data::kIgnoreIndex, context);
        double weight = double(count) / double(step_targets);
        loss.backward(Tensor::full(loss.shape(), weight, loss.dtype(), loss.device()));
        if (carried_) carried_->after(a, final_state);
        Tensor part = kernels::scale(loss.value(), weight);
        if (loss_dev.defined())
          kernels::accumulate(loss_dev, part);
        else
          loss_dev = part;
      }
      if (reducer_) reducer_->finish_backward();  // hands over buckets no gradient reached
    }
    return loss_dev;
  }

  // A non-finite loss or norm: the step is skipped, up to train.max_nan_skips times.
  void skip_step(int64_t step, const StepOutcome& s) {
    state_.nan_skips += 1;
    opt_->zero_grad();
    say(fmt::format("warning: step {}: non-finite {} ({}); the step is skipped ({} of at most {})", step + 1,
                    std::isfinite(s.loss) ? "gradient norm" : "loss", std::isfinite(s.loss) ? s.gnorm : s.loss,
                    state_.nan_skips, config_.train.max_nan_skips));
    write_metrics(fmt::format("{{\"step\":{},\"skipped\":true,\"loss\":{},\"grad_norm\":{}}}", step + 1,
                              jnum(s.loss), jnum(s.gnorm)));
    if (state_.nan_skips <= config_.train.max_nan_skips) return;
    result_.nan_skips = state_.nan_skips;
    const std::string before = newest_before_skips(run_dir_);
    fail("train: {} steps had a non-finite loss or gradient (train.max_nan_skips = {}); stopping at step {}. {}. "
         "Lower optim.lr, check the data or use train.dtype f32; or allow more skips: coil resume {} --set "
         "train.max_nan_skips=N",
         state_.nan_skips, config_.train.max_nan_skips, step + 1,
         before.empty() ? "No checkpoint was written before the first skipped step"
                        : fmt::format("The newest checkpoint from before the first skipped step is kept: {} (step {})",
                                      before, read_checkpoint_state(before).step),
         run_dir_);
  }

  // ---- log, evaluate, save, stop ----

  void write_metrics(const std::string& json) {
    if (metrics_) metrics_->write(json);
  }

  // One log line (console, metrics.jsonl, TensorBoard) with the averages since the last one.
  void log() {
    double loss_sum = window_.loss_sum, loss_count = double(window_.loss_count);
    if (comm_) {  // the logged loss is the mean over all ranks' steps
      auto sum = comm_->sum_over_ranks({loss_sum, loss_count}, "the logged loss");
      loss_sum = sum[0], loss_count = sum[1];
    }
    const double lr = state_.last_lr;
    auto now = Clock::now();
    double dt = std::chrono::duration<double>(now - window_.start).count();
    double tok_s = double(state_.tokens_seen - window_.tokens_at_start) / std::max(dt, 1e-9);
    double step_s = dt / double(std::max<int64_t>(window_.steps, 1));
    double eta = step_s * double(config_.train.steps - state_.step);
    // Unknown without a peak to compare with (the CPU, unless COIL_PEAK_TFLOPS): NaN, logged as null.
    double mfu = peak_flops_ > 0 ? tok_s * flops_per_token_ / (peak_flops_ * env_.world_size) : NAN;
    double mem = device_.is_cuda() ? double(memory_stats(device_).peak_in_use) : double(host_rss_bytes());
    double loss_avg = loss_count > 0 ? loss_sum / loss_count : NAN;
    double gnorm_avg = window_.gnorm_count ? window_.gnorm_sum / double(window_.gnorm_count) : NAN;
    say(fmt::format("step {}/{} | loss {:.4f} | lr {:.3e} | gnorm {:.3f} | {} tok/s | MFU {} | mem {} | ETA {}",
                    state_.step, config_.train.steps, loss_avg, lr, gnorm_avg, format_count(tok_s),
                    std::isfinite(mfu) ? fmt::format("{:.1f}%", 100 * mfu) : "-", format_bytes(size_t(mem)),
                    format_duration(eta)));
    write_metrics(fmt::format(
        "{{\"step\":{},\"tokens\":{},\"loss\":{},\"lr\":{},\"grad_norm\":{},\"tokens_per_s\":{},\"mfu\":{},"
        "\"memory_bytes\":{},\"elapsed_s\":{}}}",
        state_.step, state_.tokens_seen, jnum(loss_avg), jnum(lr), jnum(gnorm_avg), jnum(tok_s), jnum(mfu), jnum(mem),
        jnum(std::chrono::duration<double>(now - t_start_).count())));
    if (tb_) {
      tb_->scalar("train/loss", state_.step, loss_avg);
      tb_->scalar("train/lr", state_.step, lr);
      tb_->scalar("train/grad_norm", state_.step, gnorm_avg);
      tb_->scalar("train/tokens_per_s", state_.step, tok_s);
    }
    window_.restart(now, state_.tokens_seen);
  }

  // The held-out loss on the fixed evaluation batches (several ranks: each its share).
  void evaluate() {
    if (val_batches_.empty()) return;
    if (comm_) comm_->wait("the weights' all-gather");  // ZeRO-1: the step's last collective
    model_->eval();
    EvalTotals t = run_eval(*model_, *loader_, val_batches_, device_, env_.rank, env_.world_size);
    model_->train();
    if (comm_) {  // each rank evaluated its share of the batches
      auto sum = comm_->sum_over_ranks({t.loss_sum, double(t.targets), double(t.correct)}, "the evaluation");
      t.loss_sum = sum[0];
      t.targets = int64_t(sum[1]);
      t.correct = int64_t(sum[2]);
    }
    result_.val_loss = t.loss();
    result_.val_accuracy = t.accuracy();
    if (state_.best_val_loss == 0 || t.loss() < state_.best_val_loss) state_.best_val_loss = t.loss();
    const bool bytes = byte_level(*loader_);
    std::string acc = t.has_accuracy ? fmt::format(" | accuracy {:.2f}%", 100 * t.accuracy()) : "";
    std::string bpb = bytes ? fmt::format(" | {:.4f} bits/byte", t.loss() / std::log(2.0)) : "";
    say(fmt::format("eval step {} | val loss {:.4f} | ppl {:.3f}{}{}", state_.step, t.loss(), std::exp(t.loss()), acc,
                    bpb));
    write_metrics(fmt::format("{{\"step\":{},\"tokens\":{},\"val_loss\":{},\"val_ppl\":{}{}{}}}", state_.step,
                              state_.tokens_seen, jnum(t.loss()), jnum(std::exp(t.loss())),
                              t.has_accuracy ? ",\"val_accuracy\":" + jnum(t.accuracy()) : "",
                              bytes ? ",\"val_bpb\":" + jnum(t.loss() / std::log(2.0)) : ""));
    if (tb_) {
      tb_->scalar("val/loss", state_.step, t.loss());
      if (t.has_accuracy) tb_->scalar("val/accuracy", state_.step, t.accuracy());
    }
  }

  // Rank 0 writes (every rank holds the same weights, optimizer state and global sampler
  // cursor); the others wait at a barrier, so no rank runs ahead of a checkpoint.
  void save(const char* why) {
    auto s = loader_->state();
    state_.sampler_seed = s.seed;
    state_.sampler_examples = s.examples_drawn;
    if (env_.rank == 0) {
      std::string path = checkpoint_path(run_dir_, state_.step);
      Checkpoint c = make_checkpoint(*model_, *opt_, state_);
      if (carried_) c.carried = carried_->save();
      write_checkpoint(path, c);
      prune_checkpoints(run_dir_, config_.checkpoint.keep_last, path);
      say(fmt::format("checkpoint {} ({})", path, why));
    } else if (zero_) {
      opt_->state();  // with ZeRO-1 every rank takes part in gathering the optimizer state
    }
    if (comm_) comm_->barrier("the checkpoint written by rank 0");
  }

  // Stopped early: a checkpoint and how to continue. At the end: a last evaluation and
  // checkpoint.
  TrainResult finish() {
    result_.final_step = state_.step;
    result_.nan_skips = state_.nan_skips;
    if (result_.interrupted) {
      save(result_.signal               ? (result_.signal == SIGINT ? "interrupted by SIGINT" : "interrupted by SIGTERM")
           : result_.time_limit_reached ? "the time limit"
                                        : "stopped");
      say(fmt::format("stopped at step {}/{}; continue with: coil resume {}", state_.step, config_.train.steps,
                      run_dir_));
      return result_;
    }
    evaluate();
    if (config_.checkpoint.at_end) save("end of training");
    say(fmt::format("done: {} steps in {}", state_.step - result_.start_step, format_duration(seconds_since(t_start_))));
    return result_;
  }

  // ---- the run's parts ----
  Config config_;
  const TrainOptions& options_;
  const Clock::time_point call_start_;  // time_limit_s counts from here
  std::function<void(const std::string&)> print_;
  dist::DistEnv env_;
  Device device_;
  std::unique_ptr<dist::Communicator> comm_;
  bool zero_ = false;
  std::string run_dir_, config_path_;
  // The run directory as found: a checkpoint to continue from, damaged or unusable ones to set
  // aside, a note on a changed schedule; or the initial weights of model.init_from.
  bool resuming_ = false;
  Checkpoint ckpt_;
  std::string ckpt_path_, schedule_note_;
  std::vector<PassedOver> passed_over_;
  NamedTensors initial_;
  // Model, optimizer, data.
  std::unique_ptr<layers::LanguageModel> model_;
  std::unique_ptr<dist::GradReducer> reducer_;
  std::unique_ptr<Optimizer> opt_;
  optim::Schedule schedule_;
  std::unique_ptr<data::DataLoader> loader_;
  int64_t accum_ = 1, tokens_per_step_ = 0;
  std::unique_ptr<CarriedState> carried_;
  EvalBatches val_batches_;
  // Progress and output.
  TrainState state_;
  TrainResult result_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<TensorBoardWriter> tb_;
  double flops_per_token_ = 0, peak_flops_ = 0;
  Clock::time_point t_start_;
  LogWindow window_;
  int64_t steps_this_call_start_ = 0;
  Tensor stop_flag_;  // several ranks: the summed stop requests of the step
  bool stop_agreed_ = false;
};

}  // namespace

TrainResult run_training(Config config, const TrainOptions& options) { return Trainer(std::move(config), options).run(); }

}  // namespace coil::train
