#include "train/config.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/cuda.h"
#include "core/error.h"

namespace coil::train {
namespace {

using layers::ComputeDType;

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

// Where a value came from, for error messages: "file:line" or "--set key=value".
struct Origins {
  std::string source;
  std::map<std::string, std::string> overrides;  // key path -> "--set ..."
  std::map<std::string, int> lines;              // key path -> 1-based line in the file

  std::string where(const std::string& path, const YAML::Node& node) const {
    auto it = overrides.find(path);
    if (it != overrides.end()) return it->second;
    return fmt::format("{}:{}", source, node.Mark().line + 1);
  }
  std::string where(const std::string& path) const {
    auto it = overrides.find(path);
    if (it != overrides.end()) return it->second;
    auto l = lines.find(path);
    if (l != lines.end()) return fmt::format("{}:{}", source, l->second);
    return source;
  }
};

std::string node_text(const YAML::Node& node) {
  if (node.IsScalar()) return "'" + node.Scalar() + "'";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  return "nothing";
}

[[noreturn]] void bad(const std::string& where, const std::string& path, const std::string& what) {
  fail("{}: {}: {}", where, path, what);
}

int64_t parse_int(const YAML::Node& node, const std::string& where, const std::string& path, int64_t lo,
                  int64_t hi) {
  if (!node.IsScalar() || node.Scalar().empty()) bad(where, path, "expected an integer, got " + node_text(node));
  const std::string& s = node.Scalar();
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(s.c_str(), &end, 10);
  int64_t value = 0;
  if (end && *end == '\0' && errno == 0) {
    value = v;
  } else {
    // 1e6, 5.0e5: accepted when the value is a whole number.
    errno = 0;
    double d = std::strtod(s.c_str(), &end);
    if (!(end && *end == '\0') || errno != 0 || !std::isfinite(d) || d != std::floor(d) || std::abs(d) > 9e18)
      bad(where, path, fmt::format("expected an integer, got '{}'", s));
    value = int64_t(d);
  }
  if (value < lo || value > hi) {
    if (hi == kMaxInt) bad(where, path, fmt::format("must be >= {}, got {}", lo, value));
    bad(where, path, fmt::format("must be in [{}, {}], got {}", lo, hi, value));
  }
  return value;
}

double parse_double(const YAML::Node& node, const std::string& where, const std::string& path) {
  if (!node.IsScalar() || node.Scalar().empty()) bad(where, path, "expected a number, got " + node_text(node));
  const std::string& s = node.Scalar();
  errno = 0;
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (!(end && *end == '\0') || errno == ERANGE || !std::isfinite(d))
    bad(where, path, fmt::format("expected a finite number, got '{}'", s));
  return d;
}

bool parse_bool(const YAML::Node& node, const std::string& where, const std::string& path) {
  if (node.IsScalar()) {
    std::string s = node.Scalar();
    for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (s == "true" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "no" || s == "off") return false;
  }
  bad(where, path, "expected true or false, got " + node_text(node));
}

std::string parse_string(const YAML::Node& node, const std::string& where, const std::string& path) {
  if (node.IsNull()) return "";
  if (!node.IsScalar()) bad(where, path, "expected a string, got " + node_text(node));
  return node.Scalar();
}

std::string join(const std::vector<std::string>& items, const char* sep = ", ") {
  std::string out;
  for (auto& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

template <class E>
E parse_enum(const YAML::Node& node, const std::string& where, const std::string& path) {
  std::string s = parse_string(node, where, path);
  E value{};
  if (!layers::parse_choice(s, value))
    bad(where, path, fmt::format("must be one of {}, got '{}'", layers::choice_names<E>(), s));
  return value;
}

// Writes a double so that it parses back to the same bits (fmt's shortest round trip).
std::string number_text(double v) { return fmt::format("{}", v); }

// One key of the config: how to read it and how to write it.
struct Field {
  std::string path;
  std::string section;
  std::string help;  // type and range, for errors and --help
  std::function<void(const YAML::Node&, const std::string& where)> read;
  std::function<void(YAML::Emitter&)> write;
};

class Fields {
 public:
  std::vector<Field> list;

  void integer(const std::string& path, int64_t& v, int64_t lo = std::numeric_limits<int64_t>::min(),
               int64_t hi = kMaxInt) {
    std::string help = hi == kMaxInt ? fmt::format("integer >= {}", lo) : fmt::format("integer in [{}, {}]", lo, hi);
    if (lo == std::numeric_limits<int64_t>::min()) help = "integer";
    add(path, help, [&v, path, lo, hi](const YAML::Node& n, const std::string& w) { v = parse_int(n, w, path, lo, hi); },
        [&v](YAML::Emitter& e) { e << std::to_string(v); });
  }
  // A number in a range; `open_lo`: the lower bound itself is not allowed.
  void number(const std::string& path, double& v, double lo, double hi, bool open_lo = false, bool open_hi = false) {
    std::string help = fmt::format("number in {}{}, {}{}", open_lo ? "(" : "[", number_text(lo),
                                   std::isinf(hi) ? "inf" : number_text(hi), open_hi || std::isinf(hi) ? ")" : "]");
    add(path, help,
        [&v, path, lo, hi, open_lo, open_hi, help](const YAML::Node& n, const std::string& w) {
          double d = parse_double(n, w, path);
          if (d < lo || d > hi || (open_lo && d == lo) || (open_hi && d == hi))
            bad(w, path, fmt::format("must be a {}, got {}", help, n.Scalar()));
          v = d;
        },
        [&v](YAML::Emitter& e) { e << number_text(v); });
  }
  // A count >= 0, or "all" (stored as `all`, a negative sentinel).
  void count_or_all(const std::string& path, int64_t& v, int64_t all) {
    add(path, "integer >= 0 or all",
        [&v, path, all](const YAML::Node& n, const std::string& w) {
          v = n.IsScalar() && n.Scalar() == "all" ? all : parse_int(n, w, path, 0, kMaxInt);
        },
        [&v, all](YAML::Emitter& e) { e << (v == all ? std::string("all") : std::to_string(v)); });
  }
  void boolean(const std::string& path, bool& v) {
    add(path, "true or false", [&v, path](const YAML::Node& n, const std::string& w) { v = parse_bool(n, w, path); },
        [&v](YAML::Emitter& e) { e << (v ? "true" : "false"); });
  }
  void string(const std::string& path, std::string& v) {
    add(path, "string", [&v, path](const YAML::Node& n, const std::string& w) { v = parse_string(n, w, path); },
        [&v](YAML::Emitter& e) { e << YAML::DoubleQuoted << v; });
  }
  void choice(const std::string& path, std::string& v, std::vector<std::string> choices) {
    std::string help = "one of " + join(choices, " | ");
    add(path, help,
        [&v, path, choices](const YAML::Node& n, const std::string& w) {
          std::string s = parse_string(n, w, path);
          for (auto& c : choices)
            if (s == c) {
              v = s;
              return;
            }
          bad(w, path, fmt::format("must be one of {}, got '{}'", join(choices), s));
        },
        [&v](YAML::Emitter& e) { e << v; });
  }
  // A device: auto | cpu | cuda | cuda:N.
  void device(const std::string& path, std::string& v) {
    add(path, "auto | cpu | cuda | cuda:N",
        [&v, path](const YAML::Node& n, const std::string& w) {
          std::string s = parse_string(n, w, path);
          bool ok = s == "auto" || s == "cpu" || s == "cuda";
          if (!ok && s.rfind("cuda:", 0) == 0 && s.size() > 5)
            ok = s.find_first_not_of("0123456789", 5) == std::string::npos;
          if (!ok) bad(w, path, fmt::format("must be auto, cpu, cuda or cuda:N, got '{}'", s));
          v = s;
        },
        [&v](YAML::Emitter& e) { e << v; });
  }
  void number_list(const std::string& path, std::vector<double>& v, size_t count, double lo, double hi, bool open_hi) {
    std::string help = fmt::format("a list of {} numbers in [{}, {}{}", count, number_text(lo), number_text(hi),
                                   open_hi ? ")" : "]");
    add(path, help,
        [&v, path, count, lo, hi, open_hi, help](const YAML::Node& n, const std::string& w) {
          if (!n.IsSequence() || n.size() != count)
            bad(w, path, fmt::format("expected {}, got {}", help, node_text(n)));
          std::vector<double> out;
          for (size_t i = 0; i < count; ++i) {
            std::string p = fmt::format("{}[{}]", path, i);
            double d = parse_double(n[i], w, p);
            if (d < lo || d > hi || (open_hi && d == hi))
              bad(w, p, fmt::format("must be in [{}, {}{}, got {}", number_text(lo), number_text(hi), open_hi ? ")" : "]",
                                    n[i].Scalar()));
            out.push_back(d);
          }
          v = out;
        },
        [&v](YAML::Emitter& e) {
          e << YAML::Flow << YAML::BeginSeq;
          for (double d : v) e << number_text(d);
          e << YAML::EndSeq;
        });
  }
  // A choice of the model (layers/model_config.h): an enum, read and written by its names.
  template <class E>
  void choice(const std::string& path, E& v) {
    add(path, "one of " + layers::choice_names<E>(" | "),
        [&v, path](const YAML::Node& n, const std::string& w) { v = parse_enum<E>(n, w, path); },
        [&v](YAML::Emitter& e) { e << layers::name(v); });
  }
  // The same, among some of the enum's values only.
  template <class E>
  void choice(const std::string& path, E& v, std::vector<E> allowed) {
    std::vector<std::string> names;
    for (E a : allowed) names.push_back(layers::name(a));
    add(path, "one of " + join(names, " | "),
        [&v, path, allowed, names](const YAML::Node& n, const std::string& w) {
          std::string s = parse_string(n, w, path);
          for (E a : allowed)
            if (s == layers::name(a)) {
              v = a;
              return;
            }
          bad(w, path, fmt::format("must be one of {}, got '{}'", join(names), s));
        },
        [&v](YAML::Emitter& e) { e << layers::name(v); });
  }
  template <class E>
  void choice_list(const std::string& path, std::vector<E>& v) {
    add(path, "a list of " + layers::choice_names<E>(" | "),
        [&v, path](const YAML::Node& n, const std::string& w) {
          if (n.IsNull()) {
            v.clear();
            return;
          }
          if (!n.IsSequence()) bad(w, path, "expected a list, got " + node_text(n));
          std::vector<E> out;
          for (size_t i = 0; i < n.size(); ++i) out.push_back(parse_enum<E>(n[i], w, fmt::format("{}[{}]", path, i)));
          v = out;
        },
        [&v](YAML::Emitter& e) {
          e << YAML::Flow << YAML::BeginSeq;
          for (E x : v) e << layers::name(x);
          e << YAML::EndSeq;
        });
  }
  void positive(const std::string& path, double& v) { number(path, v, 0, INFINITY, true); }

  const Field* find(const std::string& path) const {
    for (auto& f : list)
      if (f.path == path) return &f;
    return nullptr;
  }

 private:
  void add(const std::string& path, std::string help, std::function<void(const YAML::Node&, const std::string&)> read,
           std::function<void(YAML::Emitter&)> write) {
    list.push_back({path, path.substr(0, path.find('.')), std::move(help), std::move(read), std::move(write)});
  }
};

const std::vector<std::string> kSections = {"run", "model", "data", "train", "optim", "eval", "checkpoint", "log"};


// Every field of a config, bound to its members, in the order they are written out.
Fields all_fields(Config& c) {
  Fields f;
  f.string("run.name", c.run.name);
  f.string("run.dir", c.run.dir);
  // model.preset is handled apart (it replaces the whole model before the other keys apply),
  // but it is listed so that it is written out and known.
  f.string("model.preset", c.model.preset);
  f.string("model.init_from", c.model.init_from);
  layers::visit_model_keys(c.model.config, f);
  f.choice("data.kind", c.data.kind, {"synthetic", "tokens"});
  f.choice("data.task", c.data.task, {"selective_copying", "induction_heads", "random"});
  f.string("data.path", c.data.path);
  f.string("data.val_path", c.data.val_path);
  f.number("data.val_fraction", c.data.val_fraction, 0, 0.5, false, false);
  f.integer("data.task_vocab", c.data.task_vocab, 2);
  f.integer("data.copy_tokens", c.data.copy_tokens, 1);
  f.boolean("data.check_ids", c.data.check_ids);
  f.boolean("data.reset_at_eot", c.data.reset_at_eot);
  f.choice("data.sampler", c.data.sampler, {"random", "shuffled", "sequential"});
  f.integer("train.seq_len", c.train.seq_len, 1);
  f.integer("train.micro_batch", c.train.micro_batch, 1);
  f.integer("train.tokens_per_step", c.train.tokens_per_step, 0);
  f.integer("train.steps", c.train.steps, 1);
  f.choice("train.dtype", c.train.dtype, {ComputeDType::automatic, ComputeDType::bf16, ComputeDType::f32});
  f.device("train.device", c.train.device);
  f.integer("train.seed", c.train.seed, 0);
  f.boolean("train.deterministic", c.train.deterministic);
  f.integer("train.max_nan_skips", c.train.max_nan_skips, 0);
  f.number("train.dist_timeout_s", c.train.dist_timeout_s, 0, INFINITY, true);
  f.number("train.bucket_mb", c.train.bucket_mb, 0, INFINITY, true);
  f.integer("train.zero", c.train.zero, 0, 1);
  f.boolean("train.carry_state", c.train.carry_state);
  f.number("optim.lr", c.optim.lr, 0, 10, true);
  f.number_list("optim.betas", c.optim.betas, 2, 0, 1, true);
  f.number("optim.weight_decay", c.optim.weight_decay, 0, INFINITY);
  f.number("optim.eps", c.optim.eps, 0, 1, true);
  f.number("optim.grad_clip", c.optim.grad_clip, 0, INFINITY);
  f.choice("optim.schedule", c.optim.schedule, {"cosine", "constant", "linear"});
  f.number("optim.warmup", c.optim.warmup, 0, INFINITY);
  f.number("optim.min_lr", c.optim.min_lr, 0, 10);
  f.integer("eval.every", c.eval.every, 0);
  f.count_or_all("eval.batches", c.eval.batches, EvalSection::kAll);
  f.integer("checkpoint.every", c.checkpoint.every, 0);
  f.integer("checkpoint.keep_last", c.checkpoint.keep_last, 1);
  f.boolean("checkpoint.at_end", c.checkpoint.at_end);
  f.integer("log.every", c.log.every, 1);
  f.boolean("log.tensorboard", c.log.tensorboard);
  return f;
}

// Edit distance for "did you mean".
size_t distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

[[noreturn]] void unknown_key(const Fields& fields, const std::string& where, const std::string& path) {
  std::string prefix = path.substr(0, path.rfind('.') + 1);
  std::vector<std::string> siblings;
  std::string best;
  size_t best_d = 3;
  for (auto& f : fields.list) {
    if (f.path.rfind(prefix, 0) == 0) {
      std::string rest = f.path.substr(prefix.size());
      std::string first = rest.substr(0, rest.find('.'));
      if (std::find(siblings.begin(), siblings.end(), first) == siblings.end()) siblings.push_back(first);
    }
    size_t d = distance(f.path, path);
    if (d < best_d) best_d = d, best = f.path;
  }
  std::string hint = best.empty() ? "" : fmt::format(" (did you mean '{}'?)", best);
  if (siblings.empty()) fail("{}: unknown key '{}'{}", where, path, hint);
  fail("{}: unknown key '{}'{}; known keys here: {}", where, path, hint, join(siblings));
}

void record_lines(const YAML::Node& node, const std::string& path, Origins& origins) {
  if (!node.IsMap()) return;
  for (const auto& kv : node) {
    std::string key = kv.first.Scalar();
    std::string p = path.empty() ? key : path + "." + key;
    origins.lines[p] = kv.first.Mark().line + 1;
    record_lines(kv.second, p, origins);
  }
}

// Walks a map node, reading each leaf through its field.
void read_map(const YAML::Node& map, const std::string& path, const Fields& fields, const Origins& origins,
              const std::set<std::string>& skip) {
  std::set<std::string> seen;
  for (const auto& kv : map) {
    if (!kv.first.IsScalar()) fail("{}:{}: {}: keys must be names", origins.source, kv.first.Mark().line + 1, path);
    std::string key = kv.first.Scalar();
    std::string p = path.empty() ? key : path + "." + key;
    std::string where = origins.where(p, kv.first);
    if (!seen.insert(key).second) fail("{}: key '{}' appears twice", where, p);
    if (skip.count(p)) continue;
    if (const Field* f = fields.find(p)) {
      f->read(kv.second, origins.where(p, kv.second));
      continue;
    }
    // A nested section (model.mamba, model.attention)?
    bool is_prefix = false;
    for (auto& f : fields.list) is_prefix |= f.path.rfind(p + ".", 0) == 0;
    if (is_prefix) {
      if (kv.second.IsNull()) continue;
      if (!kv.second.IsMap()) fail("{}: {}: expected a map of keys, got {}", where, p, node_text(kv.second));
      read_map(kv.second, p, fields, origins, skip);
      continue;
    }
    if (path.empty()) fail("{}: unknown section '{}' (sections: {})", where, key, join(kSections));
    unknown_key(fields, where, p);
  }
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream ss(path);
  std::string part;
  while (std::getline(ss, part, '.')) parts.push_back(part);
  return parts;
}

// Puts an override into the YAML tree (creating maps on the way).
void set_in_tree(YAML::Node& root, const std::string& assignment, Origins& origins, const Fields& fields) {
  std::string where = "--set " + assignment;
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) fail("{}: expected key.path=value", where);
  std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  while (!path.empty() && path.back() == ' ') path.pop_back();
  if (!fields.find(path)) {
    auto parts = split_path(path);
    if (!parts.empty() && std::find(kSections.begin(), kSections.end(), parts[0]) == kSections.end())
      fail("{}: unknown section '{}' (sections: {})", where, parts[0], join(kSections));
    unknown_key(fields, where, path);
  }
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    fail("{}: {}: the value is not valid YAML: {}", where, path, e.msg);
  }
  if (text.empty()) value = YAML::Node(std::string());
  auto parts = split_path(path);
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = chain.back()[parts[i]];
    if (next.IsDefined() && !next.IsNull() && !next.IsMap())
      fail("{}: {} is {} in the config, not a map", where, parts[i], node_text(next));
    if (!next.IsDefined() || next.IsNull()) {
      chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next = chain.back()[parts[i]];
    }
    chain.push_back(next);
  }
  chain.back()[parts.back()] = value;
  origins.overrides[path] = where;
}

void validate(const Config& c, const Origins& o) {
  auto at = [&](const std::string& path) { return o.where(path); };
  try {
    c.model.config.validate();
    if (c.train.device.rfind("cuda", 0) == 0) c.model.config.check_cuda_limits();
  } catch (const Error& e) {
    // Point at the line of the first key path the message names.
    std::string msg = e.what();
    std::string where = o.source;
    size_t best = std::string::npos, best_len = 0;
    auto consider = [&](const std::string& path, const std::string& w) {
      if (path.rfind("model.", 0) != 0) return;
      size_t pos = msg.find(path);
      if (pos == std::string::npos) return;
      if (pos < best || (pos == best && path.size() > best_len)) best = pos, best_len = path.size(), where = w;
    };
    for (auto& kv : o.lines) consider(kv.first, at(kv.first));
    for (auto& kv : o.overrides) consider(kv.first, kv.second);
    fail("{}: {}", where, msg);
  }
  const auto& m = c.model.config;
  if (c.data.kind == "synthetic" && c.data.reset_at_eot)
    fail("{}: data.reset_at_eot needs token files whose documents are marked (data.kind tokens); a synthetic example "
         "is one window with no documents inside",
         at("data.reset_at_eot"));
  if (c.train.carry_state) {
    if (c.data.sampler != "sequential")
      fail("{}: train.carry_state carries each sequence slot's state into its next window, so the windows must follow "
           "each other in the stream: set data.sampler: sequential (the random sampler draws unrelated windows)",
           at("train.carry_state"));
    if (!m.has_mamba())
      fail("{}: train.carry_state: the model has no Mamba layers, so there is no state to carry (attention layers see "
           "each window alone)",
           at("train.carry_state"));
  }
  if (c.data.kind == "tokens") {
    if (c.data.path.empty()) fail("{}: data.path: data.kind is tokens but no token files are given", at("data.path"));
  } else if (c.data.task == "selective_copying") {
    if (c.data.task_vocab + 2 > m.vocab_size)
      fail("{}: data.task_vocab: selective copying uses task_vocab + 2 = {} token ids but model.vocab_size is {}",
           at("data.task_vocab"), c.data.task_vocab + 2, m.vocab_size);
    if (c.train.seq_len < 2 * c.data.copy_tokens)
      fail("{}: train.seq_len: selective copying needs seq_len >= 2 * data.copy_tokens = {}, got {}",
           at("train.seq_len"), 2 * c.data.copy_tokens, c.train.seq_len);
  } else if (c.data.task == "induction_heads") {
    if (c.data.task_vocab + 1 > m.vocab_size)
      fail("{}: data.task_vocab: induction heads uses task_vocab + 1 = {} token ids but model.vocab_size is {}",
           at("data.task_vocab"), c.data.task_vocab + 1, m.vocab_size);
    if (c.train.seq_len < 4)
      fail("{}: train.seq_len: induction heads needs seq_len >= 4, got {}", at("train.seq_len"), c.train.seq_len);
  }
  int64_t micro_tokens = c.train.micro_batch * c.train.seq_len;
  if (c.train.tokens_per_step != 0 && c.train.tokens_per_step % micro_tokens != 0)
    fail("{}: train.tokens_per_step ({}) must be a multiple of train.micro_batch * train.seq_len = {} (times the "
         "number of ranks)",
         at("train.tokens_per_step"), c.train.tokens_per_step, micro_tokens);
  if (c.optim.warmup >= 1 && c.optim.warmup != std::floor(c.optim.warmup))
    fail("{}: optim.warmup: a value >= 1 is a number of steps and must be whole, got {}", at("optim.warmup"),
         c.optim.warmup);
  if (c.warmup_steps() > c.train.steps)
    fail("{}: optim.warmup ({} steps) is longer than the run (train.steps = {})", at("optim.warmup"), c.warmup_steps(),
         c.train.steps);
  if (c.optim.min_lr > c.optim.lr)
    fail("{}: optim.min_lr ({}) is above optim.lr ({})", at("optim.min_lr"), c.optim.min_lr, c.optim.lr);
  if (m.learned_positions() && c.train.seq_len > m.attention.max_seq_len)
    fail("{}: train.seq_len ({}) is longer than model.attention.max_seq_len ({}), the learned position table",
         at("train.seq_len"), c.train.seq_len, m.attention.max_seq_len);
  if (m.dtype != ComputeDType::automatic && c.train.dtype != ComputeDType::automatic && m.dtype != c.train.dtype)
    fail("{}: model.dtype ({}) and train.dtype ({}) disagree; set one of them", at("model.dtype"), m.dtype,
         c.train.dtype);
  const std::string bf16 = bf16_dtype_key(c);
  if (c.train.device == "cpu" && !bf16.empty())
    fail("{}: {} is bf16, which needs a GPU, but train.device is cpu: use f32 (or auto: f32 on the CPU)", at(bf16),
         bf16);
  if (c.data.sampler != "random" && c.data.kind != "tokens")
    fail("{}: data.sampler: {} orders the windows of a token stream (data.kind tokens); synthetic data draws each "
         "example afresh",
         at("data.sampler"), c.data.sampler);
  if (c.eval.batches == EvalSection::kAll && c.data.kind != "tokens")
    fail("{}: eval.batches: all is the whole held-out split of token files, but synthetic data has no end: give a "
         "number of batches",
         at("eval.batches"));
}

std::string emit_value(const Field& f) {
  YAML::Emitter e;
  f.write(e);
  return e.c_str();
}

}  // namespace

std::string Config::run_dir() const { return run.dir.empty() ? "runs/" + run.name : run.dir; }

int64_t Config::grad_accum(int world_size) const {
  COIL_CHECK(world_size >= 1, "config: the number of ranks must be at least 1, got {}", world_size);
  int64_t per_step = train.micro_batch * train.seq_len * world_size;
  if (train.tokens_per_step == 0) return 1;
  COIL_CHECK(train.tokens_per_step % per_step == 0,
             "config: train.tokens_per_step ({}) must be a multiple of train.micro_batch * train.seq_len * ranks "
             "= {} * {} * {} = {}",
             train.tokens_per_step, train.micro_batch, train.seq_len, world_size, per_step);
  return train.tokens_per_step / per_step;
}

int64_t Config::warmup_steps() const {
  if (optim.warmup >= 1) return int64_t(optim.warmup);
  return int64_t(std::llround(optim.warmup * double(train.steps)));
}

Config parse_config(const std::string& yaml_text, const std::string& source, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    fail("{}:{}: not valid YAML: {}", source, e.mark.line + 1, e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) fail("{}: a config is a map of sections ({})", source, join(kSections));

  Config config;
  config.source = source;
  Origins origins;
  origins.source = source;
  record_lines(root, "", origins);
  Fields fields = all_fields(config);
  for (auto& o : overrides) set_in_tree(root, o, origins, fields);

  // Sections must be maps.
  for (const auto& kv : root) {
    std::string key = kv.first.Scalar();
    if (std::find(kSections.begin(), kSections.end(), key) == kSections.end())
      fail("{}: unknown section '{}' (sections: {})", origins.where(key, kv.first), key, join(kSections));
    if (!kv.second.IsMap() && !kv.second.IsNull())
      fail("{}: {}: a section is a map of keys, got {}", origins.where(key, kv.first), key, node_text(kv.second));
  }
  // The preset first: it replaces the whole model, then the other model keys override it.
  YAML::Node model = root["model"];
  if (model && model.IsMap() && model["preset"]) {
    YAML::Node p = model["preset"];
    std::string where = origins.where("model.preset", p);
    std::string name = parse_string(p, where, "model.preset");
    config.model.preset = name;
    if (name.empty()) {
      config.model.config = layers::ModelConfig();
    } else {
      try {
        config.model.config = layers::ModelConfig::preset(name);
      } catch (const Error& e) {
        fail("{}: {}", where, e.what());
      }
    }
  }
  read_map(root, "", fields, origins, {"model.preset"});
  config.model.config.name = config.model.preset;
  // The two dtypes must agree, and a run's config.yaml names both: --set train.dtype alone
  // (coil eval RUN --set train.dtype=bf16) takes the model with it.
  if (origins.overrides.count("train.dtype") && !origins.overrides.count("model.dtype"))
    config.model.config.dtype = ComputeDType::automatic;
  validate(config, origins);
  return config;
}

Config load_run_config(const std::string& run_dir, const std::vector<std::string>& overrides) {
  std::string path = (std::filesystem::path(run_dir) / "config.yaml").string();
  if (!std::filesystem::exists(path))
    fail("'{}' is not a run directory: it has no config.yaml (start a run with `coil train CONFIG`)", run_dir);
  return load_config(path, overrides);
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    if (std::filesystem::exists(std::filesystem::path(path) / "config.yaml", ec))
      fail("config: '{}' is a run directory, not a config file: to continue its run, coil resume {}", path, path);
    fail("config: '{}' is a directory, not a config file", path);
  }
  std::ifstream in(path);
  if (!in) fail("config: cannot read '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path, overrides);
}

void apply_override(Config& config, const std::string& assignment) {
  std::string text = to_yaml(config);
  std::string source = config.source;
  config = parse_config(text, source.empty() ? "config" : source, {assignment});
  config.source = source;
}

std::string to_yaml(const Config& config) {
  Fields fields = all_fields(const_cast<Config&>(config));
  YAML::Emitter e;
  e << YAML::BeginMap;
  for (const auto& section : kSections) {
    e << YAML::Key << section << YAML::Value << YAML::BeginMap;
    std::vector<std::string> open;  // nested maps currently open, below the section
    for (const auto& f : fields.list) {
      if (f.section != section) continue;
      auto parts = split_path(f.path);
      std::vector<std::string> want(parts.begin() + 1, parts.end() - 1);
      size_t common = 0;
      while (common < open.size() && common < want.size() && open[common] == want[common]) ++common;
      while (open.size() > common) {
        e << YAML::EndMap;
        open.pop_back();
      }
      while (open.size() < want.size()) {
        e << YAML::Key << want[open.size()] << YAML::Value << YAML::BeginMap;
        open.push_back(want[open.size()]);
      }
      e << YAML::Key << parts.back() << YAML::Value;
      f.write(e);
    }
    while (!open.empty()) {
      e << YAML::EndMap;
      open.pop_back();
    }
    e << YAML::EndMap;
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

std::vector<std::string> config_differences(const Config& a, const Config& b, bool only_computation) {
  Fields fa = all_fields(const_cast<Config&>(a)), fb = all_fields(const_cast<Config&>(b));
  static const std::vector<std::string> bookkeeping = {
      "run.", "eval.", "checkpoint.", "log.", "train.steps", "train.device", "train.max_nan_skips",
      "train.dist_timeout_s", "train.bucket_mb", "train.zero"};
  std::vector<std::string> out;
  for (size_t i = 0; i < fa.list.size(); ++i) {
    const std::string& path = fa.list[i].path;
    if (only_computation) {
      bool skip = false;
      for (auto& p : bookkeeping) skip |= path.rfind(p, 0) == 0;
      if (skip) continue;
    }
    std::string va = emit_value(fa.list[i]), vb = emit_value(fb.list[i]);
    if (va != vb) out.push_back(fmt::format("{}: {} -> {}", path, va, vb));
  }
  return out;
}

Device resolve_device(const std::string& name, const std::string& key) {
  if (name == "auto") return cuda_available() ? Device::cuda(0) : Device::cpu();
  Device d = parse_device(name);
  if (d.is_cuda() && !cuda_available()) fail("{} is {} but no GPU is usable: {}", key, name, cuda_unavailable_reason());
  return d;
}

void resolve_for_device(Config& c, Device device, int world_size) {
  const std::string asked = c.train.device;
  c.train.device = world_size > 1 ? "cuda" : device.str();
  if (c.train.dtype == ComputeDType::automatic)
    c.train.dtype = device.is_cuda() ? ComputeDType::bf16 : ComputeDType::f32;
  if (c.model.config.dtype == ComputeDType::automatic) c.model.config.dtype = c.train.dtype;
  const std::string bf16 = bf16_dtype_key(c);
  if (device.is_cpu() && !bf16.empty())
    fail("{} is bf16, which needs a GPU, but train.device {} runs on the CPU ({}): use f32 (or auto: f32 on the CPU)",
         bf16, asked, cuda_available() ? "asked for" : cuda_unavailable_reason());
  if (device.is_cuda()) c.model.config.check_cuda_limits();
}

std::string bf16_dtype_key(const Config& c) {
  if (c.train.dtype == ComputeDType::bf16) return "train.dtype";
  if (c.model.config.dtype == ComputeDType::bf16) return "model.dtype";
  return "";
}

std::vector<std::pair<std::string, std::string>> config_keys() {
  Config c;
  Fields fields = all_fields(c);
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& f : fields.list) out.emplace_back(f.path, emit_value(f) + "  (" + f.help + ")");
  return out;
}

}  // namespace coil::train
