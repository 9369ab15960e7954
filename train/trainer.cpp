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
#include "train/atomic_file.h"
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

size_t host_rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * size_t(sysconf(_SC_PAGESIZE));
}

Device resolve_device(const std::string& name) {
  if (name == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  Device d = parse_device(name);
  if (d.is_cuda() && !cuda_available())
    fail("train.device is {} but no GPU is usable: {}", name, cuda_unavailable_reason());
  return d;
}

// With several ranks, each uses the GPU of its local rank (dist/distributed.h: choose_gpu).
Device rank_device(const std::string& name, const DistEnv& env) {
  if (env.world_size == 1) return resolve_device(name);
  COIL_CHECK(name == "auto" || name == "cuda",
             "train: {} ranks were launched ({}); each uses the GPU of its local rank, so train.device must be auto or "
             "cuda, not {}",
             env.world_size, env.launcher, name);
  COIL_CHECK(cuda_available(), "train: {} ranks were launched ({}), but no GPU is usable: {}", env.world_size,
             env.launcher, cuda_unavailable_reason());
  return Device::cuda(choose_gpu(env.local_rank, cuda_device_count(), env.launcher));
}

// The ranks must run the same resolved config: its hash goes into the rendezvous' hello.
uint64_t config_hash(const Config& c) {
  Fnv1a h;
  std::string text = to_yaml(c);
  h.update(text.data(), text.size());
  return h.h;
}

// The config as the run executes it: device and dtype resolved (several ranks: "cuda", each
// rank on the GPU of its local rank).
void resolve(Config& c, Device device, int world_size = 1) {
  const std::string asked = c.train.device;
  c.train.device = world_size > 1 ? "cuda" : device.str();
  if (c.train.dtype == "auto") c.train.dtype = device.is_cuda() ? "bf16" : "f32";
  if (c.model.config.dtype == "auto") c.model.config.dtype = c.train.dtype;
  const std::string bf16 = bf16_dtype_key(c);
  if (device.is_cpu() && !bf16.empty())
    fail("{} is bf16, which needs a GPU, but train.device {} runs on the CPU ({}): use f32 (or auto: f32 on the CPU)",
         bf16, asked, cuda_available() ? "asked for" : cuda_unavailable_reason());
  if (device.is_cuda()) c.model.config.check_cuda_limits();
}

}  // namespace

data::DataOptions data_options(const Config& c, int rank, int world) {
  data::DataOptions o;
  o.kind = c.data.kind;
  o.task = c.data.task;
  o.path = c.data.path;
  o.val_path = c.data.val_path;
  o.val_fraction = c.data.val_fraction;
  o.task_vocab = c.data.task_vocab;
  o.copy_tokens = c.data.copy_tokens;
  o.check_ids = c.data.check_ids;
  o.vocab_size = c.model.config.vocab_size;
  o.seq_len = c.train.seq_len;
  o.seed = uint64_t(c.train.seed);
  o.rank = rank;
  o.world_size = world;
  o.sampler = c.data.sampler;
  o.slots = c.train.micro_batch * c.grad_accum(world) * world;
  o.reset_at_eot = c.data.reset_at_eot;
  return o;
}

namespace {

// The documents of a batch on the device (none without data.reset_at_eot).
layers::SequenceContext documents_of(const data::Batch& b, Device device) {
  layers::SequenceContext c;
  if (b.seq_idx.defined()) c.seq_idx = b.seq_idx.to(device);
  return c;
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

}  // namespace

EvalBatches eval_batches(const data::DataLoader& loader, int64_t batches, int64_t micro_batch) {
  EvalBatches out;
  const bool all = batches == EvalSection::kAll;
  const int64_t whole = loader.num_val_batches(micro_batch);
  for (int64_t i = 0; i < (all ? whole : std::min(batches, whole)); ++i) out.emplace_back(i, micro_batch);
  if (all)
    for (int64_t w = whole * micro_batch; w < loader.num_val_batches(1); ++w) out.emplace_back(w, 1);
  return out;
}

namespace {

// Token files of the built-in byte-level tokenizer: one token is one byte (end-of-text ids
// count as one), so bits per byte is the loss in bits.
bool byte_level(const data::DataLoader& loader) {
  return loader.dataset() && loader.dataset()->files()[0].tokenizer == "byte";
}

}  // namespace

EvalTotals run_eval(const layers::LanguageModel& model, const data::DataLoader& loader, const EvalBatches& batches,
                    Device device, int rank, int world) {
  autograd::NoGradGuard no_grad;
  EvalTotals t;
  t.has_accuracy = loader.has_accuracy();
  for (size_t i = size_t(rank); i < batches.size(); i += size_t(world)) {
    data::Batch b = loader.val_batch(batches[i].first, batches[i].second);
    int64_t count = b.target_count();
    if (count == 0) continue;
    Tensor inputs = b.inputs.to(device);
    const layers::SequenceContext docs = documents_of(b, device);
    if (!t.has_accuracy) {
      Tensor targets = b.targets.to(device);
      double l = model.loss(inputs, targets, data::kIgnoreIndex, docs).value().item();
      t.loss_sum += l * double(count);
      t.targets += count;
      continue;
    }
    // Accuracy needs the logits of the answer positions: those rows are gathered on the
    // device and only they go to the host (a long sequence has few answers), where the
    // log-softmax and the argmax are taken.
    const int64_t* tg = b.targets.data<int64_t>();
    std::vector<int64_t> positions, answers;
    for (int64_t p = 0; p < b.targets.numel(); ++p)
      if (tg[p] != data::kIgnoreIndex) positions.push_back(p), answers.push_back(tg[p]);
    Tensor logits = model.forward(inputs, docs).value();
    const int64_t V = logits.size(-1);
    Tensor rows = kernels::embedding(logits.reshape({b.targets.numel(), V}),
                                     Tensor::from_vector(positions, {count}, DType::i64, device))
                      .to(Device::cpu(), DType::f32);
    const float* lg = rows.data<float>();
    for (int64_t i = 0; i < count; ++i) {
      const float* row = lg + i * V;
      const int64_t answer = answers[size_t(i)];
      int64_t arg = 0;
      double mx = row[0];
      for (int64_t v = 1; v < V; ++v)
        if (row[v] > mx) mx = row[v], arg = v;
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
      t.loss_sum += mx + std::log(sum) - double(row[answer]);
      t.correct += arg == answer;
      t.targets += 1;
    }
  }
  return t;
}

namespace {

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

// Throws when the checkpoint's parameters are not those of the model `m` describes (names and
// shapes), saying which one differs: a checkpoint of another model.
void check_same_model(const Checkpoint& c, const layers::ModelConfig& m) {
  std::map<std::string, Shape> stored;
  for (auto& [name, t] : c.params) stored[name] = t.shape();
  auto expected = layers::parameter_shapes(m);
  for (auto& [name, shape] : expected) {
    auto it = stored.find(name);
    if (it == stored.end())
      fail("it holds another model: it has no {} ({} in this run's config)", name, shape_str(shape));
    if (it->second != shape)
      fail("it holds another model: {} is {} there but {} in this run's config", name, shape_str(it->second),
           shape_str(shape));
  }
  if (stored.size() != expected.size())
    fail("it holds another model: {} parameters there, {} in this run's config", stored.size(), expected.size());
}

void load_parameters(layers::LanguageModel& model, const NamedTensors& params) {
  layers::StateDict sd;
  for (auto& [name, t] : params) sd[name] = t;
  model.load_state_dict(sd, true);
}

void load_into(layers::LanguageModel& model, Optimizer& opt, const Checkpoint& c) {
  load_parameters(model, c.params);
  opt.load_state(c.optimizer);
}

}  // namespace


TrainResult run_training(Config config, const TrainOptions& options) {
  const auto call_start = Clock::now();  // time_limit_s counts from here
  auto print = options.print ? options.print : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  DistEnv env = detect_dist_env();
  auto say = [&](const std::string& s) {  // rank 0 speaks for all
    if (!options.quiet && env.rank == 0) print(s);
  };
  COIL_CHECK(!config.train.carry_state || env.world_size == 1,
             "train.carry_state with {} ranks ({}): carried states belong to the sequence slots of one process and "
             "are saved by it; rank 0 writes the checkpoints alone, so the other ranks' states would be lost. Carried "
             "state runs on one process (one GPU) for now",
             env.world_size, env.launcher);
  Device device = rank_device(config.train.device, env);
  if (device.is_cuda()) cuda::set_device(device.index);  // before anything is allocated
  resolve(config, device, env.world_size);
  set_deterministic(config.train.deterministic);
  // Several ranks: rank 0 hands out the NCCL id over TCP; every later wait on collectives goes
  // through the communicator's watchdog (train.dist_timeout_s).
  std::unique_ptr<Communicator> comm;
  if (env.world_size > 1)
    comm = std::make_unique<Communicator>(env, config.train.dist_timeout_s, config_hash(config));
  if (!env.note.empty()) say("note: " + env.note);
  const bool zero = comm && config.train.zero == 1;
  if (config.train.zero == 1 && !comm)
    say("note: train.zero 1 shards the optimizer over several ranks; one rank keeps it whole");
  const std::string run_dir = config.run_dir();
  const std::string config_path = (fs::path(run_dir) / "config.yaml").string();

  // ---- the run directory: new, the same run (continue), or another run (error). Nothing is
  // written into it before every check has passed (below, after the data) ----
  bool resuming = false;
  Checkpoint ckpt;
  std::string ckpt_path;
  std::vector<PassedOver> passed_over;  // damaged or unusable checkpoints, set aside below
  std::string schedule_note;
  auto warn = [&](const std::string& s) { say("warning: " + s); };
  if (fs::exists(config_path)) {
    Config existing = load_config(config_path);
    auto diffs = config_differences(existing, config, true);
    if (!diffs.empty()) {
      std::string list;
      for (auto& d : diffs) list += "\n  " + d;
      fail("train: the run directory '{}' holds a different run (its config.yaml differs in:{}\n); choose another "
           "run.name or run.dir, or delete the directory",
           run_dir, list);
    }
    auto same_model = [&](const Checkpoint& c) { check_same_model(c, config.model.config); };
    bool has_ckpt = load_latest(run_dir, ckpt, &ckpt_path, warn, same_model, &passed_over);
    if (options.resume && !has_ckpt) fail("resume: '{}' has no usable checkpoint to resume from", run_dir);
    if (has_ckpt && (options.resume || options.allow_resume)) {
      resuming = true;
      for (auto& d : config_differences(existing, config, false)) say("note: config changed since the checkpoint: " + d);
      const int64_t next = ckpt.state.step;
      const double old_lr = optim::learning_rate(make_schedule(existing), next);
      const double new_lr = optim::learning_rate(make_schedule(config), next);
      if (existing.train.steps != config.train.steps && next < config.train.steps && old_lr != new_lr)
        schedule_note = fmt::format(
            "note: train.steps changed from {} to {}: the learning-rate schedule is recomputed for {} steps, so "
            "step {} runs at lr {:.4e} (the {}-step schedule had {:.4e})",
            existing.train.steps, config.train.steps, config.train.steps, next + 1, new_lr, existing.train.steps,
            old_lr);
    }
  } else if (options.resume) {
    fail("resume: '{}' is not a run directory (no config.yaml)", run_dir);
  }
  NamedTensors initial;  // model.init_from, read and checked before the run directory is written
  if (!resuming && !config.model.init_from.empty())
    initial = initial_weights(config.model.init_from, config.model.config, warn);

  // ---- model, optimizer, data ----
  layers::LanguageModel model(config.model.config, uint64_t(config.train.seed));
  if (!initial.empty()) {
    load_parameters(model, initial);
    say(fmt::format("starting from the weights of {} (model.init_from)", config.model.init_from));
  }
  model.to(device);
  model.train();
  // Several ranks: the gradients live in the reducer's buckets (the optimizer adopts them) and
  // each complete bucket is averaged over the ranks while backward goes on.
  // With ZeRO-1 each bucket is reduce-scattered instead, and the optimizer shards its moments.
  std::unique_ptr<GradReducer> reducer;
  if (comm) {
    std::vector<autograd::Variable> params;
    for (auto& [name, p] : model.named_parameters()) params.push_back(p->var);
    reducer = std::make_unique<GradReducer>(
        params, size_t(config.train.bucket_mb * double(1 << 20)),
        [c = comm.get(), zero](const Tensor& bucket) {
          zero ? c->reduce_scatter_mean_async(bucket) : c->all_reduce_mean_async(bucket);
        },
        zero ? env.world_size : 0);
  }
  Optimizer opt(model, config.optim, zero ? ZeroSharding{reducer.get(), comm.get()} : ZeroSharding{});
  const optim::Schedule schedule = make_schedule(config);
  data::DataLoader loader(data_options(config, env.rank, env.world_size));
  const int64_t accum = config.grad_accum(env.world_size);
  const int64_t mb = config.train.micro_batch, L = config.train.seq_len;
  const int64_t tokens_per_step = accum * mb * L * env.world_size;
  std::unique_ptr<CarriedState> carried;
  if (config.train.carry_state) carried = std::make_unique<CarriedState>(model, accum * mb, mb);

  TrainState state;
  state.config_yaml = to_yaml(config);
  state.rng_seed = uint64_t(config.train.seed);
  state.world_size = env.world_size;
  if (resuming) {
    load_into(model, opt, ckpt);
    if (carried) carried->load(ckpt.carried, ckpt_path);
    loader.set_state({ckpt.state.sampler_seed, ckpt.state.sampler_examples});
    state = ckpt.state;
    state.config_yaml = to_yaml(config);
    state.world_size = env.world_size;
    say(fmt::format("resuming {} from {} (step {}, {} tokens)", run_dir, fs::path(ckpt_path).filename().string(),
                    state.step, format_count(double(state.tokens_seen))));
    if (ckpt.state.world_size != env.world_size)
      say(fmt::format("note: the checkpoint was written by {} rank(s) and this run has {}: the parameters and the "
                      "optimizer state continue as they are, but the data order changes (the stream goes on from "
                      "example {}, split over the ranks and micro-batches differently), so the run is not the one "
                      "{} rank(s) would have made",
                      ckpt.state.world_size, env.world_size, loader.state().examples_drawn, ckpt.state.world_size));
  }
  TrainResult result;
  result.run_dir = run_dir;
  result.start_step = state.step;
  result.final_step = state.step;
  if (resuming && state.step >= config.train.steps) {  // nothing to do: the directory stays as it is
    say(fmt::format("{} is finished already: its checkpoint is at step {} and train.steps is {} (to train further: "
                    "coil resume {} --set train.steps=N)",
                    run_dir, state.step, config.train.steps, run_dir));
    return result;
  }
  if (!schedule_note.empty()) say(schedule_note);
  // Every check has passed: the run directory is written from here on (rank 0).
  std::unique_ptr<MetricsLog> metrics;
  std::unique_ptr<TensorBoardWriter> tb;
  if (env.rank == 0) {
    for (auto& line : set_aside(passed_over)) say("warning: " + line);
    fs::create_directories(run_dir);
    replace_file(config_path, [&](std::ostream& out) { out << to_yaml(config); });
    metrics = std::make_unique<MetricsLog>((fs::path(run_dir) / "metrics.jsonl").string(), state.step);
    if (config.log.tensorboard) tb = std::make_unique<TensorBoardWriter>(run_dir);
  }
  auto write_metrics = [&](const std::string& json) {
    if (metrics) metrics->write(json);
  };

  const double flops_per_token = model.flops_per_token(L);
  const double peak = peak_flops(device, config.train.dtype);
  say(fmt::format("run {} -> {}", config.run.name, run_dir));
  say(fmt::format("model {}: {} parameters, {} FLOPs/token; {} {}", config.model.preset,
                  format_count(double(model.num_parameters())), format_count(flops_per_token), device.str(),
                  config.train.dtype));
  say(fmt::format("data: {}", loader.describe()));
  if (zero)
    say(fmt::format("ZeRO-1: AdamW's moments sharded over {} ranks: {} per rank", env.world_size,
                    format_bytes(opt.state_bytes())));
  say(fmt::format("{} steps of {} tokens ({} x {} x {} accumulation{})", config.train.steps, tokens_per_step, mb, L,
                  accum, env.world_size > 1 ? fmt::format(" x {} ranks", env.world_size) : ""));

  g_signal = 0;
  SignalHandlerScope signals(options.install_signal_handlers ? on_signal : nullptr);
  // Rank 0 writes (every rank holds the same weights, optimizer state and global sampler
  // cursor); the others wait at a barrier, so no rank runs ahead of a checkpoint.
  auto save = [&](const char* why) {
    auto s = loader.state();
    state.sampler_seed = s.seed;
    state.sampler_examples = s.examples_drawn;
    if (env.rank == 0) {
      std::string path = checkpoint_path(run_dir, state.step);
      Checkpoint c = make_checkpoint(model, opt, state);
      if (carried) c.carried = carried->save();
      write_checkpoint(path, c);
      prune_checkpoints(run_dir, config.checkpoint.keep_last, path);
      say(fmt::format("checkpoint {} ({})", path, why));
    } else if (zero) {
      opt.state();  // with ZeRO-1 every rank takes part in gathering the optimizer state
    }
    if (comm) comm->barrier("the checkpoint written by rank 0");
  };
  const EvalBatches val_batches = eval_batches(loader, config.eval.batches, mb);
  auto evaluate_now = [&]() {
    if (val_batches.empty()) return;
    if (comm) comm->wait("the weights' all-gather");  // ZeRO-1: the step's last collective
    model.eval();
    EvalTotals t = run_eval(model, loader, val_batches, device, env.rank, env.world_size);
    model.train();
    if (comm) {  // each rank evaluated its share of the batches
      auto sum = comm->sum_over_ranks({t.loss_sum, double(t.targets), double(t.correct)}, "the evaluation");
      t.loss_sum = sum[0];
      t.targets = int64_t(sum[1]);
      t.correct = int64_t(sum[2]);
    }
    result.val_loss = t.loss();
    result.val_accuracy = t.accuracy();
    if (state.best_val_loss == 0 || t.loss() < state.best_val_loss) state.best_val_loss = t.loss();
    std::string acc = t.has_accuracy ? fmt::format(" | accuracy {:.2f}%", 100 * t.accuracy()) : "";
    std::string bpb = byte_level(loader) ? fmt::format(" | {:.4f} bits/byte", t.loss() / std::log(2.0)) : "";
    say(fmt::format("eval step {} | val loss {:.4f} | ppl {:.3f}{}{}", state.step, t.loss(), std::exp(t.loss()), acc,
                    bpb));
    write_metrics(fmt::format("{{\"step\":{},\"tokens\":{},\"val_loss\":{},\"val_ppl\":{}{}{}}}", state.step,
                              state.tokens_seen, jnum(t.loss()), jnum(std::exp(t.loss())),
                              t.has_accuracy ? ",\"val_accuracy\":" + jnum(t.accuracy()) : "",
                              byte_level(loader) ? ",\"val_bpb\":" + jnum(t.loss() / std::log(2.0)) : ""));
    if (tb) {
      tb->scalar("val/loss", state.step, t.loss());
      if (t.has_accuracy) tb->scalar("val/accuracy", state.step, t.accuracy());
    }
  };

  // ---- the loop ----
  auto t_start = Clock::now();
  auto t_log = t_start;
  int64_t tokens_at_log = state.tokens_seen, steps_at_log = 0;
  double loss_sum_log = 0, gnorm_sum_log = 0;
  int64_t loss_count_log = 0, gnorm_count_log = 0;
  const int64_t steps_this_call_start = state.step;
  // A signal, stop_after_steps or the time limit, seen on this rank, asks to stop once
  // `steps_done` are done.
  auto out_of_time = [&]() {
    return options.time_limit_s > 0 &&
           std::chrono::duration<double>(Clock::now() - call_start).count() >= options.time_limit_s;
  };
  auto stop_requested = [&](int64_t steps_done) {
    return g_signal.load() != 0 || (steps_done > steps_this_call_start && out_of_time()) ||
           (options.stop_after_steps >= 0 && steps_done - steps_this_call_start >= options.stop_after_steps);
  };
  // Several ranks must stop after the same step: each step sums the ranks' requests (a flag
  // all-reduced with the gradients, read in the step's sync).
  Tensor stop_flag = comm ? Tensor::zeros({1}, DType::f32, device) : Tensor();
  bool stop_agreed = false;
  while (state.step < config.train.steps) {
    if (stop_agreed || (!comm && stop_requested(state.step))) {
      result.interrupted = true;
      result.signal = g_signal.load();
      result.time_limit_reached = !result.signal && state.step > steps_this_call_start && out_of_time();
      break;
    }
    const int64_t step = state.step;
    const double lr = optim::learning_rate(schedule, step);
    // Draw the step's micro-batches first: each gradient is weighted by its share of targets,
    // so the step's gradient is that of the mean loss over all its targets. Several ranks
    // average their gradients, each weighted by its own targets: the same thing when every
    // rank's batch holds as many targets (token windows: all positions; synthetic tasks: a
    // fixed number per example).
    std::vector<data::Batch> batches;
    int64_t step_targets = 0;
    for (int64_t a = 0; a < accum; ++a) {
      batches.push_back(loader.next_train(mb));
      step_targets += batches.back().target_count();
    }
    opt.zero_grad();
    Tensor loss_dev;  // the step's loss, summed on the device: no sync per micro-batch
    for (int64_t a = 0; a < accum; ++a) {
      const data::Batch& b = batches[size_t(a)];
      // Only the last micro-step's backward all-reduces; the earlier ones accumulate locally.
      if (reducer) reducer->set_reduce_this_backward(a == accum - 1);
      int64_t count = b.target_count();
      if (count > 0) {
        Tensor inputs = b.inputs.to(device), targets = b.targets.to(device);
        layers::SequenceContext context = documents_of(b, device);
        layers::ModelState final_state;
        if (carried) {
          context.initial = &carried->before(a, b);
          context.final = &final_state;
        }
        autograd::Variable loss = model.loss(inputs, targets, data::kIgnoreIndex, context);
        double weight = double(count) / double(step_targets);
        loss.backward(Tensor::full(loss.shape(), weight, loss.dtype(), loss.device()));
        if (carried) carried->after(a, final_state);
        Tensor part = kernels::scale(loss.value(), weight);
        if (loss_dev.defined())
          kernels::accumulate(loss_dev, part);
        else
          loss_dev = part;
      }
      if (reducer) reducer->finish_backward();  // hands over buckets no gradient reached
    }
    if (comm) {
      stop_flag.fill_(stop_requested(step + 1) ? 1.0 : 0.0);
      comm->all_reduce_sum_async(stop_flag);
      comm->join_compute_stream();  // the norm and the optimizer see the averaged gradients
    }
    Tensor gnorm_dev = opt.clip_grad_norm(config.optim.grad_clip);  // global: after the reduction
    // The one host sync of the step (docs/ARCHITECTURE.md, "Host synchronization"): with
    // several ranks through the watchdog; then bad token ids raise their error, and the loss,
    // the norm (and the stop flag) are read.
    if (comm) comm->wait("the step's gradient all-reduce");
    if (device.is_cuda()) {
      kernels::check_embedding_errors();
      kernels::check_cross_entropy_targets(device);
    }
    const double step_loss = loss_dev.defined() ? loss_dev.item() : 0.0;
    const double gnorm = gnorm_dev.item();
    if (comm) stop_agreed = stop_flag.item() > 0;
    // Several ranks decide on the norm alone: it comes from the averaged gradients, so all
    // skip the same steps (each rank's loss is its own until the log averages it).
    const bool finite = std::isfinite(gnorm) && (comm || std::isfinite(step_loss));
    if (!finite) {
      state.nan_skips += 1;
      opt.zero_grad();
      say(fmt::format("warning: step {}: non-finite {} ({}); the step is skipped ({} of at most {})", step + 1,
                      std::isfinite(step_loss) ? "gradient norm" : "loss", std::isfinite(step_loss) ? gnorm : step_loss,
                      state.nan_skips, config.train.max_nan_skips));
      write_metrics(fmt::format("{{\"step\":{},\"skipped\":true,\"loss\":{},\"grad_norm\":{}}}", step + 1,
                                jnum(step_loss), jnum(gnorm)));
      if (state.nan_skips > config.train.max_nan_skips) {
        result.nan_skips = state.nan_skips;
        const std::string before = newest_before_skips(run_dir);
        fail("train: {} steps had a non-finite loss or gradient (train.max_nan_skips = {}); stopping at step {}. {}. "
             "Lower optim.lr, check the data or use train.dtype f32; or allow more skips: coil resume {} --set "
             "train.max_nan_skips=N",
             state.nan_skips, config.train.max_nan_skips, step + 1,
             before.empty() ? "No checkpoint was written before the first skipped step"
                            : fmt::format("The newest checkpoint from before the first skipped step is kept: {} "
                                          "(step {})",
                                          before, read_checkpoint_state(before).step),
             run_dir);
      }
    } else {
      opt.step(lr);
    }
    state.step += 1;
    state.tokens_seen += tokens_per_step;
    state.last_lr = lr;
    result.losses.push_back(finite ? step_loss : NAN);
    if (options.on_step) options.on_step(state.step, finite ? step_loss : NAN);
    if (finite) {
      gnorm_sum_log += gnorm;
      gnorm_count_log += 1;
      if (std::isfinite(step_loss)) loss_sum_log += step_loss, loss_count_log += 1;
    }
    steps_at_log += 1;

    bool last = state.step == config.train.steps;
    if (state.step % config.log.every == 0 || last) {
      double loss_sum = loss_sum_log, loss_count = double(loss_count_log);
      if (comm) {  // the logged loss is the mean over all ranks' steps
        auto sum = comm->sum_over_ranks({loss_sum, loss_count}, "the logged loss");
        loss_sum = sum[0], loss_count = sum[1];
      }
      auto now = Clock::now();
      double dt = std::chrono::duration<double>(now - t_log).count();
      double tok_s = double(state.tokens_seen - tokens_at_log) / std::max(dt, 1e-9);
      double step_s = dt / double(std::max<int64_t>(steps_at_log, 1));
      double eta = step_s * double(config.train.steps - state.step);
      // Unknown without a peak to compare with (the CPU, unless COIL_PEAK_TFLOPS): NaN, logged as null.
      double mfu = peak > 0 ? tok_s * flops_per_token / (peak * env.world_size) : NAN;
      double mem = device.is_cuda() ? double(memory_stats(device).peak_in_use) : double(host_rss_bytes());
      double loss_avg = loss_count > 0 ? loss_sum / loss_count : NAN;
      double gnorm_avg = gnorm_count_log ? gnorm_sum_log / double(gnorm_count_log) : NAN;
      say(fmt::format("step {}/{} | loss {:.4f} | lr {:.3e} | gnorm {:.3f} | {} tok/s | MFU {} | mem {} | ETA {}",
                      state.step, config.train.steps, loss_avg, lr, gnorm_avg, format_count(tok_s),
                      std::isfinite(mfu) ? fmt::format("{:.1f}%", 100 * mfu) : "-", format_bytes(size_t(mem)),
                      format_duration(eta)));
      write_metrics(fmt::format(
          "{{\"step\":{},\"tokens\":{},\"loss\":{},\"lr\":{},\"grad_norm\":{},\"tokens_per_s\":{},\"mfu\":{},"
          "\"memory_bytes\":{},\"elapsed_s\":{}}}",
          state.step, state.tokens_seen, jnum(loss_avg), jnum(lr), jnum(gnorm_avg), jnum(tok_s), jnum(mfu),
          jnum(mem), jnum(std::chrono::duration<double>(now - t_start).count())));
      if (tb) {
        tb->scalar("train/loss", state.step, loss_avg);
        tb->scalar("train/lr", state.step, lr);
        tb->scalar("train/grad_norm", state.step, gnorm_avg);
        tb->scalar("train/tokens_per_s", state.step, tok_s);
      }
      t_log = now;
      tokens_at_log = state.tokens_seen;
      steps_at_log = 0;
      loss_sum_log = gnorm_sum_log = 0;
      loss_count_log = gnorm_count_log = 0;
    }
    if (config.eval.every > 0 && state.step % config.eval.every == 0 && !last) evaluate_now();
    if (config.checkpoint.every > 0 && state.step % config.checkpoint.every == 0 && !last) save("periodic");
  }
  result.final_step = state.step;
  result.nan_skips = state.nan_skips;
  if (result.interrupted) {
    save(result.signal               ? (result.signal == SIGINT ? "interrupted by SIGINT" : "interrupted by SIGTERM")
         : result.time_limit_reached ? "the time limit"
                                     : "stopped");
    say(fmt::format("stopped at step {}/{}; continue with: coil resume {}", state.step, config.train.steps, run_dir));
    return result;
  }
  evaluate_now();
  if (config.checkpoint.at_end) save("end of training");
  double total = std::chrono::duration<double>(Clock::now() - t_start).count();
  say(fmt::format("done: {} steps in {}", state.step - result.start_step, format_duration(total)));
  return result;
}

EvalModel load_eval_model(const Config& config_in, const std::string& checkpoint,
                          const std::function<void(const std::string&)>& print) {
  EvalModel m;
  m.config = config_in;
  m.device = resolve_device(m.config.train.device);
  resolve(m.config, m.device);
  m.model = std::make_unique<layers::LanguageModel>(m.config.model.config, uint64_t(m.config.train.seed));
  Checkpoint c;
  std::string path = checkpoint;
  auto same_model = [&](const Checkpoint& k) { check_same_model(k, m.config.model.config); };
  auto warn = [&](const std::string& w) {
    if (print) print("warning: " + w);
  };
  if (!checkpoint.empty()) {
    c = read_checkpoint(checkpoint);
    try {
      same_model(c);
    } catch (const Error& e) {
      fail("eval: checkpoint '{}' cannot be used: {}", checkpoint, e.what());
    }
  } else if (!load_latest(m.config.run_dir(), c, &path, warn, same_model)) {
    if (!list_checkpoints(m.config.run_dir()).empty())
      fail("eval: no checkpoint of {} can be used: each is damaged or holds another model (the warnings say why)",
           m.config.run_dir());
    path.clear();
    if (!m.config.model.init_from.empty()) {
      c.params = initial_weights(m.config.model.init_from, m.config.model.config, warn);
      path = m.config.model.init_from;
    } else {
      warn(fmt::format("{} has no checkpoint; evaluating the initial weights", m.config.run_dir()));
    }
  }
  if (!path.empty()) {
    load_parameters(*m.model, c.params);
    m.step = c.state.step;
    m.checkpoint = path;
  }
  m.model->to(m.device);
  m.model->eval();
  return m;
}

EvalResult evaluate(const Config& config_in, const std::string& checkpoint,
                    const std::function<void(const std::string&)>& print) {
  COIL_CHECK(config_in.eval.batches != 0,
             "eval: eval.batches is 0 in this config (it never evaluates): give a number of batches, or all for the "
             "whole held-out split (coil eval --batches N|all)");
  EvalModel m = load_eval_model(config_in, checkpoint, print);
  const Config& config = m.config;
  EvalResult r;
  r.step = m.step;
  r.checkpoint = m.checkpoint;
  data::DataLoader loader(data_options(config, 0, 1));
  const EvalBatches batches = eval_batches(loader, config.eval.batches, config.train.micro_batch);
  COIL_CHECK(!batches.empty(), "eval: the data holds no validation windows (data.val_fraction or data.val_path)");
  EvalTotals t = run_eval(*m.model, loader, batches, m.device);
  r.loss = t.loss();
  r.perplexity = std::exp(t.loss());
  r.accuracy = t.accuracy();
  if (byte_level(loader)) r.bits_per_byte = t.loss() / std::log(2.0);
  r.batches = int64_t(batches.size());
  for (auto& b : batches) r.windows += b.second;
  r.targets = t.targets;
  return r;
}

}  // namespace coil::train
