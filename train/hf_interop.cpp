#include "train/hf_interop.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "data/sentencepiece_tokenizer.h"
#include "data/token_file.h"
#include "train/config.h"
#include "train/safetensors.h"

namespace coil::train {
namespace fs = std::filesystem;
namespace {

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read {}", quoted(path));
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    fail("{} is not valid JSON ({})", quoted(path), e.what());
  }
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out.good()) fail("cannot write {}", quoted(path));
}

// The safetensors files of a model directory, as one set of named tensors.
struct WeightFiles {
  std::vector<std::unique_ptr<SafetensorsReader>> files;
  std::map<std::string, std::pair<const SafetensorsReader*, const SafetensorsEntry*>> tensors;

  void add_all(const SafetensorsReader& r) {
    for (auto& e : r.entries()) {
      auto [it, fresh] = tensors.emplace(e.name, std::make_pair(&r, &e));
      if (!fresh) fail("tensor '{}' is in both '{}' and '{}'", e.name, it->second.first->path(), r.path());
    }
  }
};

// model.safetensors.index.json: {"weight_map": {tensor: shard file}}; every shard must hold
// exactly the tensors the index gives it.
WeightFiles open_shards(const fs::path& dir, const fs::path& index_path) {
  nlohmann::json index = read_json(index_path);
  std::string where = quoted(index_path);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail("{}: lacks the object \"weight_map\" (tensor name -> shard file)", where);
  std::map<std::string, std::set<std::string>> by_shard;  // shard -> tensors the index gives it
  for (auto& [name, file] : index["weight_map"].items()) {
    if (!file.is_string()) fail("{}: weight_map[\"{}\"] must be a file name, got {}", where, name, file.dump());
    by_shard[file.get<std::string>()].insert(name);
  }
  if (by_shard.empty()) fail("{}: weight_map is empty", where);
  WeightFiles w;
  for (auto& [shard, names] : by_shard) {
    fs::path p = dir / shard;
    if (shard.find('/') != std::string::npos || !fs::is_regular_file(p))
      fail("{}: names shard '{}' (for '{}'), which is not a file in {}", where, shard, *names.begin(), quoted(dir));
    w.files.push_back(std::make_unique<SafetensorsReader>(p.string()));
    for (auto& n : names)
      if (!w.files.back()->find(n)) fail("{}: puts '{}' in '{}', which does not hold it", where, n, shard);
  }
  for (auto& r : w.files) {
    const auto& names = by_shard.at(fs::path(r->path()).filename().string());
    for (auto& e : r->entries())
      if (!names.count(e.name))
        fail("{}: '{}' holds '{}', which the index does not list there", where, r->path(), e.name);
    w.add_all(*r);
  }
  return w;
}

WeightFiles open_weights(const fs::path& dir) {
  fs::path index = dir / "model.safetensors.index.json", single = dir / "model.safetensors";
  if (fs::exists(index)) return open_shards(dir, index);
  if (fs::exists(single)) {
    WeightFiles w;
    w.files.push_back(std::make_unique<SafetensorsReader>(single.string()));
    w.add_all(*w.files.back());
    return w;
  }
  if (fs::exists(dir / "pytorch_model.bin"))
    fail("{} holds pytorch_model.bin, a pickle coil does not read; convert it to safetensors first: python3 -c "
         "\"import torch, safetensors.torch as s; sd = torch.load('{}', map_location='cpu'); "
         "s.save_file({{k: v.contiguous().clone() for k, v in sd.items()}}, '{}', metadata={{'format': 'pt'}})\"",
         quoted(dir), (dir / "pytorch_model.bin").string(), single.string());
  fail("{} has neither model.safetensors nor model.safetensors.index.json", quoted(dir));
}

// The checkpoint behind a coil source: a checkpoint file or a run directory's newest good one.
Checkpoint read_coil_checkpoint(const std::string& source, const std::function<void(const std::string&)>& warn,
                                std::string* path = nullptr) {
  if (path) *path = source;
  if (!fs::is_directory(source)) return read_checkpoint(source);
  Checkpoint c;
  if (!load_latest(source, c, path, warn))
    fail("'{}' holds no usable checkpoint", source);
  return c;
}

Config checkpoint_config(const Checkpoint& c, const std::string& path) {
  return parse_config(c.state.config_yaml, path + " (its config)");
}

// The tokenizer of the run's token files, for an export.
struct TokenizerInfo {
  int64_t eot = -1;
  std::string name;                 // the token files' `tokenizer` attribute ("" when none)
  std::string sentencepiece_model;  // the serialized model, for SentencePiece files
};

TokenizerInfo tokenizer_of(const Config& config, const std::function<void(const std::string&)>& print) {
  TokenizerInfo t;
  if (config.data.kind != "tokens") return t;
  try {
    std::string first = data::expand_glob(config.data.path).front();
    data::TokenDataset files(first, 0, false);
    t.eot = files.files()[0].eot_token;
    t.name = files.files()[0].tokenizer;
    if (t.name.rfind("sentencepiece", 0) == 0) t.sentencepiece_model = data::read_tokenizer_model(first);
  } catch (const Error& e) {
    if (print) print(fmt::format("note: no tokenizer goes with the export ({})", e.what()));
    return TokenizerInfo{};
  }
  return t;
}

std::string tokenizer_description(const TokenizerInfo& t) {
  if (t.name == "byte") return "byte: ids 0-255 are the bytes of UTF-8 text, 256 is end-of-text (coil prepare)";
  if (!t.sentencepiece_model.empty())
    return t.name + ": the SentencePiece model tokenizer.model (coil prepare; id 0 <unk>, " + std::to_string(t.eot) +
           " end-of-text, no BOS)";
  return t.name + " (the tokenizer the training token files were made with)";
}

// Writes a directory through `<out>.tmp`, renamed into place once complete. An existing `out`
// is replaced only when `replaceable` says it may be.
void write_directory(const fs::path& out, const std::function<bool(const fs::path&)>& replaceable,
                     const std::function<void(const fs::path&)>& write) {
  std::error_code ec;
  if (fs::exists(out) && !(fs::is_directory(out) && (fs::is_empty(out, ec) || replaceable(out))))
    fail("{} exists and is not an earlier export; choose another output path or remove it", quoted(out));
  if (out.has_parent_path()) fs::create_directories(out.parent_path());
  fs::path tmp = out;
  tmp += ".tmp";
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  try {
    write(tmp);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  if (fs::exists(out)) {
    fs::path old = out;
    old += ".old";
    fs::remove_all(old);
    fs::rename(out, old);
    fs::rename(tmp, out);
    fs::remove_all(old);
  } else {
    fs::rename(tmp, out);
  }
}

fs::path without_trailing_slash(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  return p.filename().empty() && p.has_parent_path() ? p.parent_path() : p;
}

std::string safetensors_dtype(const std::string& dtype) {
  if (dtype == "f32" || dtype == "F32") return "F32";
  if (dtype == "bf16" || dtype == "BF16") return "BF16";
  fail("export: --dtype must be f32 or bf16, got '{}'", dtype);
}

std::string count_text(int64_t n) {
  return n >= 1000000 ? fmt::format("{:.1f}M", double(n) / 1e6) : fmt::format("{:.1f}k", double(n) / 1e3);
}

}  // namespace

std::vector<std::pair<std::string, std::string>> architecture(const layers::ModelConfig& c) {
  std::vector<std::pair<std::string, std::string>> a;
  auto add = [&](const std::string& key, const auto& value) { a.emplace_back(key, fmt::format("{}", value)); };
  add("model.d_model", c.d_model);
  add("model.n_layer", c.n_layer);
  add("model.vocab_size (padded)", c.padded_vocab_size());
  std::string mixers;
  for (layers::MixerKind m : c.layer_mixers()) mixers += (mixers.empty() ? "" : ", ") + std::string(layers::name(m));
  add("model.layers", "[" + mixers + "]");
  add("model.mlp", c.mlp);
  if (c.mlp != layers::MlpKind::none) add("model.mlp_hidden (resolved)", c.mlp_hidden_size());
  add("model.norm", c.norm);
  add("model.norm_eps", c.norm_eps);
  add("model.residual_in_fp32", c.residual_in_fp32);
  add("model.tie_embeddings", c.tie_embeddings);
  add("model.bias", c.bias);
  if (c.has_mamba()) {
    add("model.mamba.d_state", c.mamba.d_state);
    add("model.mamba.expand", c.mamba.expand);
    add("model.mamba.d_conv", c.mamba.d_conv);
    add("model.mamba.dt_rank (resolved)", c.dt_rank());
    add("model.mamba.conv_bias", c.mamba.conv_bias);
  }
  if (c.has_attention()) {
    add("model.attention.n_head", c.attention.n_head);
    add("model.attention.positions", c.attention.positions);
    if (c.attention.positions == layers::Positions::rope) add("model.attention.rope_theta", c.attention.rope_theta);
    if (c.attention.positions == layers::Positions::learned)
      add("model.attention.max_seq_len", c.attention.max_seq_len);
    add("model.attention.window", c.attention.window);
  }
  return a;
}

std::string matching_preset(const layers::ModelConfig& config) {
  auto relevant = [](const layers::ModelConfig& c) {
    auto a = architecture(c);
    a.erase(std::remove_if(a.begin(), a.end(),
                           [](const auto& kv) {
                             return kv.first == "model.vocab_size (padded)" || kv.first == "model.attention.max_seq_len";
                           }),
            a.end());
    return a;
  };
  auto want = relevant(config);
  for (auto& name : layers::ModelConfig::preset_names())
    if (relevant(layers::ModelConfig::preset(name)) == want) return name;
  return "";
}

ExternalModel read_external_model(const std::string& dir) {
  fs::path d(dir);
  if (!fs::is_directory(d))
    fail("'{}' is not a directory (a Hugging Face or mamba_ssm model directory holds config.json and "
         "model.safetensors)",
         dir);
  fs::path config_path = d / "config.json";
  if (!fs::exists(config_path)) fail("'{}' has no config.json: it is not a Hugging Face or mamba_ssm model directory", dir);
  nlohmann::json json = read_json(config_path);
  ExternalModel m;
  m.family = detect_family(json, quoted(config_path));
  m.config = model_config_from_json(m.family, json, quoted(config_path));
  m.preset = matching_preset(m.config);
  m.config.name = m.preset;
  WeightFiles w = open_weights(d);
  StoredTensors stored;
  stored.where = quoted(d);
  for (auto& [name, file] : w.tensors) stored.names.push_back(name);
  stored.shape = [&](const std::string& name) { return w.tensors.at(name).second->shape; };
  stored.read = [&](const std::string& name) {
    auto [reader, entry] = w.tensors.at(name);
    Tensor t = reader->read(*entry);
    return t.dtype() == DType::f32 ? t : t.to(DType::f32);
  };
  m.params = import_tensors(m.family, m.config, stored);
  return m;
}

std::string import_model(const std::string& dir, const std::string& out) {
  const fs::path out_path = without_trailing_slash(out);
  const bool to_file = out_path.extension() == ".h5";
  if (!to_file && fs::exists(out_path) && !(fs::is_directory(out_path) && fs::is_empty(out_path)))
    fail("import: '{}' exists; give a new directory (or a .h5 file) to --out", out);
  ExternalModel m = read_external_model(dir);

  Config config;
  config.model.preset = m.preset;
  config.model.config = m.config;
  config.run.name = to_file ? out_path.stem().string() : out_path.filename().string();
  config.data.kind = "tokens";  // no task fits a pretrained model: the user names the token files
  config.data.path = "data/train.h5";
  const auto& model = config.model.config;
  if (model.learned_positions())
    config.train.seq_len = std::min(config.train.seq_len, model.attention.max_seq_len);
  Checkpoint ckpt;
  ckpt.state.config_yaml = to_yaml(config);
  ckpt.params = m.params;
  if (model.tie_embeddings) ckpt.aliases.emplace_back("lm_head.weight", "backbone.embedding.weight");
  parse_config(ckpt.state.config_yaml, "the imported config");  // what is written must read back

  int64_t n = 0;
  for (auto& [name, t] : m.params) n += t.numel();
  std::string what = fmt::format("{} from '{}': {} layers x {}, vocabulary {}, {} parameters ({})", family_name(m.family),
                                 dir, model.n_layer, model.d_model, model.padded_vocab_size(), count_text(n),
                                 m.preset.empty() ? "no coil preset has this architecture" : "coil preset " + m.preset);
  if (to_file) {
    write_checkpoint(out, ckpt);
    return fmt::format("imported {} -> {}", what, out);
  }
  const std::string weights = (out_path / "model.h5").string();
  config.model.init_from = weights;
  std::string run_yaml = to_yaml(config);
  parse_config(run_yaml, "the imported run config");
  write_directory(out_path, [](const fs::path&) { return false; }, [&](const fs::path& tmp) {
    write_checkpoint((tmp / "model.h5").string(), ckpt);
    write_file(tmp / "config.yaml", "# coil import " + dir + "\n# Set data.path (and train, optim) to fine-tune: coil train " +
                                        (out_path / "config.yaml").string() + " --set data.path=...\n" + run_yaml);
  });
  return fmt::format("imported {} -> {} (the weights) and {} (a run config that starts from them)", what, weights,
                     (out_path / "config.yaml").string());
}

std::string default_export_path(const std::string& source, const std::string& format) {
  fs::path s(source);
  if (fs::is_directory(s)) return (s / (format == "safetensors" ? "model.safetensors" : format)).string();
  if (format == "safetensors") return fs::path(s).replace_extension(".safetensors").string();
  fs::path base = fs::path(s).replace_extension("");
  return base.string() + "-" + format;
}

void export_model(const std::string& source, const std::string& format, const std::string& out,
                  const std::string& dtype, const std::function<void(const std::string&)>& print) {
  if (format != "safetensors" && format != "hf" && format != "mamba_ssm")
    fail("export: --format must be safetensors, hf or mamba_ssm, got '{}'", format);
  const std::string dt = safetensors_dtype(dtype);
  std::string path;
  Checkpoint c = read_coil_checkpoint(source, [&](const std::string& w) {
    if (print) print("warning: " + w);
  }, &path);
  const std::vector<std::pair<std::string, std::string>> pt = {{"format", "pt"}};
  if (format == "safetensors") {
    NamedTensors tensors = c.params;
    for (auto& [alias, target] : c.aliases)
      for (auto& [name, t] : c.params)
        if (name == target) tensors.emplace_back(alias, t);
    if (fs::path(out).has_parent_path()) fs::create_directories(fs::path(out).parent_path());
    write_safetensors(out, tensors, dt,
                      {{"format", "pt"}, {"coil_step", std::to_string(c.state.step)}, {"coil_config", c.state.config_yaml}});
    if (print) print(fmt::format("exported {} tensors of {} (step {}) to {}", tensors.size(), path, c.state.step, out));
    return;
  }
  Config config = checkpoint_config(c, path);
  const layers::ModelConfig& model = config.model.config;
  Family family = format == "hf" ? hf_family_for(model) : Family::mamba_ssm;
  TokenizerInfo tok = tokenizer_of(config, print);
  nlohmann::ordered_json json = model_config_to_json(family, model, tok.eot, dt == "F32" ? "float32" : "bfloat16");
  if (family != Family::mamba_ssm && !tok.name.empty()) json["coil_tokenizer"] = tokenizer_description(tok);
  NamedTensors tensors = export_tensors(family, model, c.params);
  auto earlier_export = [](const fs::path& dir) {
    return fs::exists(dir / "config.json") && !fs::exists(dir / "config.yaml") && !fs::exists(dir / "checkpoints");
  };
  write_directory(without_trailing_slash(out), earlier_export, [&](const fs::path& tmp) {
    write_file(tmp / "config.json", json.dump(2) + "\n");
    write_safetensors((tmp / "model.safetensors").string(), tensors, dt, pt);
    if (family != Family::mamba_ssm && tok.eot >= 0) {
      nlohmann::ordered_json gen;
      gen["eos_token_id"] = tok.eot;
      write_file(tmp / "generation_config.json", gen.dump(2) + "\n");
    }
    if (!tok.sentencepiece_model.empty()) write_file(tmp / "tokenizer.model", tok.sentencepiece_model);
  });
  if (print)
    print(fmt::format("exported {} (step {}) as {} ({} tensors, {}{}) to {}", path, c.state.step, family_name(family),
                      tensors.size(), dt, tok.name.empty() ? "" : ", tokenizer " + tok.name, out));
}

NamedTensors initial_weights(const std::string& path, const layers::ModelConfig& run_model,
                             const std::function<void(const std::string&)>& warn) {
  layers::ModelConfig source;
  NamedTensors params;
  bool external = false;
  if (fs::is_directory(path) && fs::exists(fs::path(path) / "config.json")) {
    ExternalModel m = read_external_model(path);
    source = m.config;
    params = std::move(m.params);
    external = true;
  } else if (fs::is_regular_file(path) || (fs::is_directory(path) && fs::exists(fs::path(path) / "config.yaml"))) {
    std::string used;
    Checkpoint c = read_coil_checkpoint(path, warn, &used);
    source = checkpoint_config(c, used).model.config;
    params = std::move(c.params);
  } else {
    fail("model.init_from: '{}' is neither a checkpoint file, a run directory nor a model directory with "
         "config.json",
         path);
  }
  auto run = architecture(run_model), src = architecture(source);
  std::map<std::string, std::string> src_values(src.begin(), src.end());
  std::string diffs;
  for (auto& [key, value] : run) {
    auto it = src_values.find(key);
    std::string theirs = it == src_values.end() ? "(none)" : it->second;
    if (theirs != value) diffs += fmt::format("\n  {}: the run has {}, '{}' has {}", key, value, path, theirs);
  }
  for (auto& [key, value] : src)
    if (std::none_of(run.begin(), run.end(), [&](const auto& kv) { return kv.first == key; }))
      diffs += fmt::format("\n  {}: the run has (none), '{}' has {}", key, path, value);
  if (!diffs.empty())
    fail("model.init_from: the run's model is not the one in '{}':{}\n{}", path, diffs,
         external ? fmt::format("`coil import {} --out DIR` writes a run config with its model section", path)
                  : "set the run's model keys to the source's (its config.yaml)");
  return params;
}

}  // namespace coil::train
