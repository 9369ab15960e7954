#include "train/generate.h"

#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include "core/allocator.h"
#include "core/cuda.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "layers/generation.h"
#include "layers/inference.h"
#include "train/checkpoint.h"
#include "train/config.h"

namespace coil::train {
namespace {

namespace fs = std::filesystem;

struct Run {
  Config config;  // the checkpoint's (the run as it was trained)
  Checkpoint checkpoint;
  std::string path;  // of the checkpoint
};

Run load_run(const std::string& source, std::FILE* log) {
  Run r;
  if (fs::is_directory(source)) {
    auto warn = [&](const std::string& w) { std::fprintf(log, "warning: %s\n", w.c_str()); };
    if (!load_latest(source, r.checkpoint, &r.path, warn))
      fail("generate: '{}' holds no usable checkpoint (train the run first, or give a checkpoint file)", source);
  } else {
    COIL_CHECK(fs::exists(source), "generate: '{}' is neither a run directory nor a checkpoint file", source);
    r.checkpoint = read_checkpoint(source);
    r.path = source;
  }
  r.config = parse_config(r.checkpoint.state.config_yaml, r.path + " (its config)");
  return r;
}

// The tokenizer the run was trained with (see generate.h); errors say why there is none.
data::Tokenizer run_tokenizer(const Run& run, const std::string& override_path) {
  if (!override_path.empty())
    return fs::path(override_path).extension() == ".model" ? data::Tokenizer::from_sentencepiece_file(override_path)
                                                           : data::Tokenizer::from_token_file(override_path);
  const DataSection& data = run.config.data;
  if (data.kind == "synthetic")
    fail("generate: {} was trained on the synthetic task '{}', which has no text tokenizer: give the prompts as "
         "token ids with --ids",
         run.path, data.task);
  std::vector<std::string> files;
  try {
    files = data::expand_glob(data.path);
  } catch (const Error&) {
    fail("generate: the token files '{}' that {} was trained on (data.path) are not there: pass --tokenizer FILE (a "
         "token file or the SentencePiece .model of the run), or give the prompts as token ids with --ids",
         data.path, run.path);
  }
  try {
    return data::Tokenizer::from_token_file(files.front());
  } catch (const Error& e) {
    fail("generate: {}; give the prompts as token ids with --ids", e.what());
  }
}

struct Prompt {
  std::string text;    // as given
  std::string origin;  // "--prompt", "line 3 of FILE"
};

std::vector<Prompt> read_prompts(const GenerateCommand& c) {
  if (c.has_prompt) return {{c.prompt, "--prompt"}};
  std::ifstream file;
  if (!c.prompt_file.empty()) {
    file.open(c.prompt_file);
    COIL_CHECK(file.good(), "generate: cannot read the prompt file '{}'", c.prompt_file);
  }
  std::istream& in = c.prompt_file.empty() ? std::cin : file;
  const std::string name = c.prompt_file.empty() ? "standard input" : c.prompt_file;
  std::vector<Prompt> prompts;
  std::string line;
  while (std::getline(in, line)) prompts.push_back({line, fmt::format("line {} of {}", prompts.size() + 1, name)});
  COIL_CHECK(!prompts.empty(), "generate: no prompts in {} (one prompt a line)", name);
  return prompts;
}

std::vector<int64_t> parse_ids(const Prompt& p) {
  std::istringstream in(p.text);
  std::vector<int64_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    int64_t id = -1;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    COIL_CHECK(used == word.size(), "generate: '{}' in the prompt ({}) is not a token id (with --ids a prompt is "
               "token ids separated by spaces)", word, p.origin);
    ids.push_back(id);
  }
  return ids;
}

// Where a text stream may be cut for printing: before a trailing U+FFFD (a decoder's stand-in
// for bytes that a later token may complete) and before an unfinished UTF-8 character.
size_t printable_prefix(const std::string& s) {
  size_t n = s.size();
  static const std::string replacement = "\xEF\xBF\xBD";
  while (n >= 3 && s.compare(n - 3, 3, replacement) == 0) n -= 3;
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const unsigned char c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const size_t length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return length > back ? n - back : n;
  }
  return n;
}

// Prints each prompt and its continuation in prompt order, streaming the first unfinished one
// as its tokens arrive; later prompts are buffered until their turn.
class StreamPrinter {
 public:
  StreamPrinter(std::FILE* out, const data::Tokenizer* tokenizer, const std::vector<Prompt>& prompts,
                const std::vector<std::vector<int64_t>>& ids, bool echo)
      : out_(out), tokenizer_(tokenizer), prompts_(prompts), prompt_ids_(ids), echo_(echo), rows_(prompts.size()) {
    begin_row();
  }
  void token(int64_t prompt, int64_t token) {
    rows_[size_t(prompt)].tokens.push_back(token);
    if (size_t(prompt) == current_) show(current_, false);
  }
  void end(int64_t prompt) {
    rows_[size_t(prompt)].ended = true;
    while (current_ < rows_.size() && rows_[current_].ended) {
      show(current_, true);
      std::fputs(tokenizer_ && current_ + 1 < rows_.size() ? "\n\n" : "\n", out_);
      ++current_;
      begin_row();
    }
    std::fflush(out_);
  }

 private:
  struct Row {
    std::vector<int64_t> tokens;
    size_t shown_tokens = 0;  // --ids
    std::string shown_text;   // text mode
    bool ended = false;
  };

  void begin_row() {
    if (current_ >= rows_.size()) return;
    if (echo_) {
      if (tokenizer_) std::fputs(prompts_[current_].text.c_str(), out_);
      else
        for (size_t i = 0; i < prompt_ids_[current_].size(); ++i)
          std::fprintf(out_, i ? " %lld" : "%lld", (long long)prompt_ids_[current_][i]);
    }
    show(current_, false);
  }

  void show(size_t r, bool final) {
    Row& row = rows_[r];
    if (!tokenizer_) {
      for (; row.shown_tokens < row.tokens.size(); ++row.shown_tokens)
        std::fprintf(out_, echo_ || row.shown_tokens ? " %lld" : "%lld", (long long)row.tokens[row.shown_tokens]);
    } else {
      const std::string text = tokenizer_->decode(row.tokens);
      const size_t end = final ? text.size() : printable_prefix(text);
      if (end > row.shown_text.size() && text.compare(0, row.shown_text.size(), row.shown_text) == 0) {
        std::fwrite(text.data() + row.shown_text.size(), 1, end - row.shown_text.size(), out_);
        row.shown_text.assign(text, 0, end);
      }
    }
    std::fflush(out_);
  }

  std::FILE* out_;
  const data::Tokenizer* tokenizer_;
  const std::vector<Prompt>& prompts_;
  const std::vector<std::vector<int64_t>>& prompt_ids_;
  bool echo_;
  std::vector<Row> rows_;
  size_t current_ = 0;
};

}  // namespace

void run_generate(const GenerateCommand& c, std::FILE* out, std::FILE* log) {
  layers::GenerationOptions options;
  options.max_new_tokens = c.max_new_tokens;
  options.cuda_graph = c.cuda_graph;
  const bool sample = c.temperature > 0 || (c.temperature < 0 && (c.top_k > 0 || c.top_p < 1));
  options.sampling.temperature = c.temperature >= 0 ? c.temperature : sample ? 1.0 : 0.0;
  options.sampling.top_k = c.top_k;
  options.sampling.top_p = c.top_p;
  options.sampling.seed = c.seed;
  kernels::check_sampling_options("generate", options.sampling, options.sampling.vocab);
  COIL_CHECK(c.max_new_tokens >= 1, "generate: --max-new-tokens must be at least 1, got {}", c.max_new_tokens);
  const Device device = resolve_device(c.device, "generate: --device");

  Run run = load_run(c.source, log);
  std::optional<data::Tokenizer> tokenizer;
  try {
    tokenizer = run_tokenizer(run, c.tokenizer);
  } catch (const Error&) {
    if (!c.ids) throw;  // --ids needs no tokenizer (it only lends its end-of-text id)
  }
  const std::vector<Prompt> prompts = read_prompts(c);
  std::vector<std::vector<int64_t>> ids;
  for (const Prompt& p : prompts) {
    ids.push_back(c.ids ? parse_ids(p) : tokenizer->encode(p.text));
    COIL_CHECK(!ids.back().empty(), "generate: the prompt ({}) is empty", p.origin);
  }

  layers::ModelConfig model_config = run.config.model.config;
  // bf16 on a GPU, f32 on the CPU
  if (model_config.dtype != layers::ComputeDType::f64) model_config.dtype = layers::ComputeDType::automatic;
  layers::LanguageModel model(model_config);
  layers::StateDict weights(run.checkpoint.params.begin(), run.checkpoint.params.end());
  model.load_state_dict(weights, true);
  run.checkpoint = Checkpoint();  // the host copy of the weights is no longer needed
  if (device.is_cuda()) cuda::set_device(device.index);
  model.to(device);
  model.eval();
  layers::use_inference_weights(model);
  if (tokenizer) {
    options.eot_token = tokenizer->eot_token();
    COIL_CHECK(tokenizer->vocab_size() <= model_config.vocab_size,
               "generate: the tokenizer '{}' has {} ids but the model's vocabulary only {} (model.vocab_size)",
               tokenizer->name(), tokenizer->vocab_size(), model_config.vocab_size);
  }

  StreamPrinter printer(out, c.ids ? nullptr : &*tokenizer, prompts, ids, c.echo);
  layers::TokenSink sink{[&](int64_t p, int64_t t) { printer.token(p, t); }, [&](int64_t p) { printer.end(p); }};
  layers::GenerationResult r = layers::generate(model, ids, options, sink);
  int64_t generated = 0;
  for (auto& t : r.tokens) generated += int64_t(t.size());
  const double seconds = r.prefill_seconds + r.decode_seconds;
  std::fprintf(log,
               "generate: %zu prompt(s), %lld new tokens in %.2f s (prefill %.2f s, %lld decode steps %.2f s: %.1f "
               "tokens/s); state %s (%s a sequence); %s on %s\n",
               prompts.size(), (long long)generated, seconds, r.prefill_seconds, (long long)r.steps, r.decode_seconds,
               seconds > 0 ? double(generated) / seconds : 0.0, format_bytes(r.state_bytes).c_str(),
               format_bytes(r.state_bytes / prompts.size()).c_str(), run.path.c_str(), device.str().c_str());
}

}  // namespace coil::train
