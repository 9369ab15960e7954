#include "train/metrics_log.h"

#include <cstdlib>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/version.h"
#include "core/atomic_file.h"

namespace coil::train {

int64_t drop_metrics_after(const std::string& path, int64_t step,
                           const std::function<void(int64_t lines_written)>& after_line) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return 0;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> kept;
  int64_t dropped = 0;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) {  // a last line without its newline: torn by a kill
      dropped += 1;
      break;
    }
    std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    auto pos = line.find("\"step\":");
    if (pos != std::string::npos && std::atoll(line.c_str() + pos + 7) > step)
      dropped += 1;
    else
      kept.push_back(std::move(line));
  }
  if (dropped == 0) return 0;
  replace_file(path, [&](std::ostream& out) {
    for (size_t i = 0; i < kept.size(); ++i) {
      out << kept[i] << '\n';
      if (after_line) after_line(int64_t(i + 1));
    }
  });
  return dropped;
}

MetricsLog::MetricsLog(const std::string& path, int64_t step) : path_(path) {
  drop_metrics_after(path, step);
  out_.open(path, std::ios::app);
  COIL_CHECK(out_.good(), "train: cannot write '{}'", path);
  // A start record: where this start of the run begins and which coil runs it.
  write("{\"step\":" + std::to_string(step) + ",\"coil_version\":\"" + version_string() + "\"}");
}

void MetricsLog::write(const std::string& json) {
  out_ << json << "\n";
  out_.flush();
}

}  // namespace coil::train
