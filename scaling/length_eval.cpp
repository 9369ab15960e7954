#include "scaling/length_eval.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <new>

#include "core/allocator.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "data/loader.h"
#include "scaling/report.h"
#include "train/trainer.h"

namespace coil::scaling {
namespace fs = std::filesystem;

namespace {

int64_t parse_length(const std::string& item, const std::string& text) {
  size_t used = 0;
  long long v = -1;
  try {
    v = std::stoll(item, &used);
  } catch (const std::exception&) {
  }
  if (used != item.size() || item.empty() || v < 1)
    fail("--lengths: '{}' in '{}' is not a positive whole number of tokens", item, text);
  return int64_t(v);
}

bool is_power_of_two(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

std::string length_label(int64_t length) {
  if (!is_power_of_two(length)) return std::to_string(length);
  int k = 0;
  while ((int64_t(1) << k) < length) ++k;
  return fmt::format("2^{}", k);
}

}  // namespace

std::vector<int64_t> parse_lengths(const std::string& text) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t dots = item.find("..");
    if (dots == std::string::npos) {
      out.push_back(parse_length(item, text));
    } else {
      int64_t lo = parse_length(item.substr(0, dots), text), hi = parse_length(item.substr(dots + 2), text);
      if (!is_power_of_two(lo) || !is_power_of_two(hi) || lo > hi)
        fail("--lengths: '{}' in '{}': a range A..B runs over the powers of two from A to B, so both must be powers "
             "of two and A <= B",
             item, text);
      for (int64_t v = lo; v <= hi; v *= 2) out.push_back(v);
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

LengthEvalResult evaluate_lengths(const train::Config& config, const LengthEvalOptions& options,
                                  const std::function<void(const std::string&)>& print) {
  const auto say = [&](const std::string& s) {
    if (print) print(s);
  };
  COIL_CHECK(!options.lengths.empty(), "eval --lengths: no lengths given");
  COIL_CHECK(options.examples >= 1, "eval --lengths: --examples must be at least 1, got {}", options.examples);
  COIL_CHECK(options.batch_tokens >= 1, "eval --lengths: the tokens per batch must be at least 1, got {}",
             options.batch_tokens);
  const bool has_answers = config.data.kind == "synthetic" &&
                           (config.data.task == "induction_heads" || config.data.task == "selective_copying");
  if (!has_answers)
    fail("eval --lengths: {} trains on {} data{}, which has no answers to score; accuracy against length needs a "
         "synthetic task with answers (data.task induction_heads or selective_copying)",
         config.run_dir(), config.data.kind, config.data.kind == "synthetic" ? " (" + config.data.task + ")" : "");

  train::EvalModel m = train::load_eval_model(config, options.checkpoint, say);
  const auto& model_config = m.config.model.config;
  const bool learned_positions = model_config.learned_positions();
  LengthEvalResult r;
  r.run_dir = m.config.run_dir();
  r.run = fs::path(r.run_dir).lexically_normal().filename().string();
  if (r.run.empty()) r.run = fs::path(r.run_dir).lexically_normal().parent_path().filename().string();
  r.task = m.config.data.task;
  r.checkpoint = m.checkpoint;
  r.step = m.step;
  r.train_length = m.config.train.seq_len;
  r.chance = 1.0 / double(m.config.data.task_vocab);
  r.csv = (fs::path(r.run_dir) / "length_eval.csv").string();
  say(fmt::format("{}: {} at step {}, {} examples per length", r.run,
                  r.checkpoint.empty() ? "initial weights" : fs::path(r.checkpoint).filename().string(), r.step,
                  options.examples));

  for (int64_t length : options.lengths) {
    LengthRow row;
    row.length = length;
    row.batch = std::clamp<int64_t>(options.batch_tokens / length, 1, options.examples);
    const int64_t batches = (options.examples + row.batch - 1) / row.batch;
    row.examples = batches * row.batch;
    train::Config at_length = m.config;
    at_length.train.seq_len = length;
    at_length.train.micro_batch = row.batch;
    const auto start = std::chrono::steady_clock::now();
    if (learned_positions && length > model_config.attention.max_seq_len) {
      row.status = "too long";
      row.note = fmt::format("the learned position table (model.attention.max_seq_len) has {} positions",
                             model_config.attention.max_seq_len);
    } else {
      reset_peak_memory(m.device);
      try {
        data::DataLoader loader(train::data_options(at_length));
        train::EvalTotals t =
            train::run_eval(*m.model, loader, train::eval_batches(loader, batches, row.batch), m.device);
        row.status = "ok";
        row.correct = t.correct;
        row.accuracy = t.accuracy();
        row.loss = t.loss();
      } catch (const OutOfMemory& e) {
        row.status = "OOM";
        row.note = e.what();
      } catch (const std::bad_alloc&) {
        row.status = "OOM";
        row.note = fmt::format("out of host memory at length {}", length);
      }
      if (row.status == "OOM") empty_cache(m.device);  // give the next length the whole device
      if (m.device.is_cuda()) row.peak_memory_bytes = int64_t(memory_stats(m.device).peak_in_use);
    }
    if (row.status != "ok") row.examples = 0;  // none answered
    row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::string memory = row.peak_memory_bytes >= 0 ? ", peak " + format_bytes(size_t(row.peak_memory_bytes)) : "";
    if (row.status == "ok")
      say(fmt::format("length {:>8}: {} examples (batches of {}), accuracy {:.2f}%, loss {:.4f} ({:.1f} s{})",
                      length, row.examples, row.batch, 100 * row.accuracy, row.loss, row.seconds, memory));
    else
      say(fmt::format("length {:>8}: {}: {}", length, row.status, row.note));
    r.rows.push_back(row);
    write_length_csv(r, r.csv);
  }
  return r;
}

void write_length_csv(const LengthEvalResult& r, const std::string& path) {
  std::string csv =
      "run,task,train_length,step,length,examples,batch,correct,accuracy,loss,chance,status,seconds,"
      "peak_memory_bytes\n";
  for (const auto& row : r.rows) {
    const bool ok = row.status == "ok";
    csv += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n", csv_text(r.run), r.task, r.train_length, r.step,
                       row.length, row.examples, row.batch, ok ? std::to_string(row.correct) : "",
                       ok ? csv_num(row.accuracy) : "", ok ? csv_num(row.loss) : "", csv_num(r.chance),
                       csv_text(row.status), csv_num(row.seconds),
                       row.peak_memory_bytes >= 0 ? std::to_string(row.peak_memory_bytes) : "");
  }
  replace_file(path, csv);
}

std::string format_length_table(const std::vector<LengthEvalResult>& results) {
  std::vector<int64_t> lengths;
  size_t name_width = 8;  // "examples"
  for (const auto& r : results) {
    name_width = std::max(name_width, r.run.size());
    for (const auto& row : r.rows)
      if (std::find(lengths.begin(), lengths.end(), row.length) == lengths.end()) lengths.push_back(row.length);
  }
  std::sort(lengths.begin(), lengths.end());
  auto cell_of = [](const LengthEvalResult& r, int64_t length) -> const LengthRow* {
    for (const auto& row : r.rows)
      if (row.length == length) return &row;
    return nullptr;
  };
  std::string out = fmt::format("accuracy (%) by sequence length; * the training length\n{:<{}}", "run", name_width);
  for (int64_t L : lengths) {
    bool trained = false;
    for (const auto& r : results) trained |= r.train_length == L;
    out += fmt::format(" {:>8}", length_label(L) + (trained ? "*" : ""));
  }
  out += "\n";
  for (const auto& r : results) {
    out += fmt::format("{:<{}}", r.run, name_width);
    for (int64_t L : lengths) {
      const LengthRow* row = cell_of(r, L);
      std::string cell = !row                   ? "-"
                         : row->status == "ok"  ? fmt::format("{:.1f}", 100 * row->accuracy)
                         : row->status == "OOM" ? "OOM"
                                                : "long";
      out += fmt::format(" {:>8}", cell);
    }
    out += "\n";
  }
  out += fmt::format("{:<{}}", "examples", name_width);
  for (int64_t L : lengths) {
    int64_t n = 0;
    for (const auto& r : results)
      if (const LengthRow* row = cell_of(r, L)) n = std::max(n, row->examples);
    out += fmt::format(" {:>8}", n);
  }
  return out + "\n";
}

}  // namespace coil::scaling
