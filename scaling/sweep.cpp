#include "scaling/sweep.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace coil::scaling {
namespace {

struct Axis {
  std::vector<std::string> keys;
  std::vector<std::vector<std::string>> values;  // values[key][i]
  std::vector<std::string> names;                // optional, per i
  size_t size = 0;
};

std::string scalar_text(const YAML::Node& node, const std::string& path, const std::string& where) {
  COIL_CHECK(node.IsScalar(), "{}:{}: sweep value for '{}' must be a scalar", where, node.Mark().line + 1, path);
  return node.Scalar();
}

std::string sanitize(const std::string& s) {
  std::string out;
  for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+') ? c : '-';
  return out;
}

Axis read_axis(const YAML::Node& node, const std::string& file, std::map<std::string, int>& key_lines) {
  int line = node.Mark().line + 1;
  COIL_CHECK(node.IsMap() && node.size() > 0, "{}:{}: an axis is a map of key paths to lists of values", file, line);
  Axis axis;
  for (const auto& kv : node) {
    std::string key = kv.first.Scalar();
    int key_line = kv.first.Mark().line + 1;
    if (key != "name") {
      auto prev = key_lines.find(key);
      COIL_CHECK(prev == key_lines.end(), "{}:{}: key '{}' is already given at line {}: a key may appear once (in `set:` or in one axis)",
                 file, key_line, key, prev == key_lines.end() ? 0 : prev->second);
      key_lines[key] = key_line;
    }
    COIL_CHECK(kv.second.IsSequence() && kv.second.size() > 0,
               "{}:{}: axis key '{}' needs a non-empty list of values", file, key_line, key);
    std::vector<std::string> values;
    for (const auto& v : kv.second) values.push_back(scalar_text(v, key, file));
    if (axis.size == 0) axis.size = values.size();
    COIL_CHECK(values.size() == axis.size,
               "{}:{}: axis key '{}' has {} values but the other keys of its axis have {}: keys of one axis "
               "vary together", file, key_line, key, values.size(), axis.size);
    if (key == "name")
      axis.names = values;
    else {
      axis.keys.push_back(key);
      axis.values.push_back(values);
    }
  }
  return axis;
}

}  // namespace

Sweep load_sweep(const std::string& path) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    fail("sweep: cannot read '{}'", path);
  } catch (const YAML::Exception& e) {
    fail("sweep: {}:{}: {}", path, e.mark.line + 1, e.msg);
  }
  COIL_CHECK(root.IsMap(), "sweep: {} must be a map with base, out_dir and axes", path);
  for (const auto& kv : root) {
    std::string key = kv.first.Scalar();
    COIL_CHECK(key == "base" || key == "out_dir" || key == "set" || key == "axes",
               "sweep: {}:{}: unknown key '{}' (expected base, out_dir, set, axes)", path,
               kv.first.Mark().line + 1, key);
  }
  COIL_CHECK(root["base"] && root["base"].IsScalar(), "sweep: {}: 'base' (the config every run starts from) is missing", path);
  COIL_CHECK(root["axes"] && root["axes"].IsSequence(), "sweep: {}: 'axes' (a list of axes) is missing", path);

  Sweep sweep;
  sweep.path = path;
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  std::filesystem::path base = root["base"].Scalar();
  sweep.base_config = (base.is_absolute() ? base : dir / base).lexically_normal().string();
  sweep.out_dir = root["out_dir"] ? root["out_dir"].Scalar() : "runs/" + std::filesystem::path(path).stem().string();

  std::vector<std::pair<std::string, std::string>> shared;
  if (root["set"]) {
    COIL_CHECK(root["set"].IsMap(), "sweep: {}:{}: 'set' must be a map of key paths to values", path,
               root["set"].Mark().line + 1);
    for (const auto& kv : root["set"]) {
      shared.emplace_back(kv.first.Scalar(), scalar_text(kv.second, kv.first.Scalar(), path));
      sweep.key_lines[kv.first.Scalar()] = kv.first.Mark().line + 1;
    }
  }
  std::vector<Axis> axes;
  for (const auto& a : root["axes"]) axes.push_back(read_axis(a, path, sweep.key_lines));
  COIL_CHECK(!axes.empty(), "sweep: {}: the grid expands to nothing: 'axes' is empty", path);

  // The product of the axes, the last axis varying fastest.
  std::vector<size_t> index(axes.size(), 0);
  while (true) {
    SweepRun run;
    run.overrides = shared;
    std::string name;
    for (size_t a = 0; a < axes.size(); ++a) {
      const Axis& axis = axes[a];
      size_t i = index[a];
      for (size_t k = 0; k < axis.keys.size(); ++k) run.overrides.emplace_back(axis.keys[k], axis.values[k][i]);
      std::string part = !axis.names.empty() ? axis.names[i] : axis.keys.empty() ? "" : axis.values[0][i];
      if (axis.size > 1 || !axis.names.empty()) name += (name.empty() ? "" : "_") + sanitize(part);
    }
    run.name = name.empty() ? "run" : name;
    run.run_dir = (std::filesystem::path(sweep.out_dir) / run.name).string();
    sweep.runs.push_back(run);
    size_t a = axes.size();
    while (a > 0 && ++index[a - 1] == axes[a - 1].size) index[--a] = 0;
    if (a == 0) break;
  }
  for (size_t i = 0; i < sweep.runs.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      COIL_CHECK(sweep.runs[i].name != sweep.runs[j].name,
                 "sweep: {}: two runs are both named '{}'; give an axis a `name:` list", path, sweep.runs[i].name);
  return sweep;
}

std::vector<std::string> sweep_run_overrides(const SweepRun& run) {
  std::vector<std::string> out = {"run.name=" + run.name};
  for (const auto& [key, value] : run.overrides) out.push_back(key + "=" + value);
  out.push_back("run.dir=" + run.run_dir);
  return out;
}

std::vector<std::string> sweep_train_args(const Sweep& sweep, const SweepRun& run) {
  std::vector<std::string> args = {"train", sweep.base_config};
  for (const auto& o : sweep_run_overrides(run)) {
    args.push_back("--set");
    args.push_back(o);
  }
  return args;
}

std::string shell_quote(const std::string& word) {
  bool plain = !word.empty();
  for (char c : word) plain &= std::isalnum(static_cast<unsigned char>(c)) || std::strchr("_./=+:,@%-", c) != nullptr;
  if (plain) return word;
  std::string out = "'";
  for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string format_sweep_commands(const Sweep& sweep, const std::string& program) {
  std::string out;
  for (const auto& run : sweep.runs) {
    std::string line = shell_quote(program);
    for (const auto& a : sweep_train_args(sweep, run)) line += " " + shell_quote(a);
    out += line + "\n";
  }
  return out;
}

train::Config sweep_run_config(const Sweep& sweep, const SweepRun& run) {
  try {
    return train::load_config(sweep.base_config, sweep_run_overrides(run));
  } catch (const std::exception& e) {
    // Point at the sweep file's line of the override the message names ("--set KEY=...").
    std::string msg = e.what(), where = sweep.path;
    for (const auto& [key, line] : sweep.key_lines)
      if (msg.find("--set " + key + "=") != std::string::npos) where = fmt::format("{}:{}", sweep.path, line);
    fail("sweep: {}: run '{}' (base {}): {}", where, run.name, sweep.base_config, msg);
  }
}

std::vector<train::Config> check_sweep(const Sweep& sweep) {
  std::vector<train::Config> configs;
  for (const auto& run : sweep.runs) configs.push_back(sweep_run_config(sweep, run));
  return configs;
}

}  // namespace coil::scaling
