// metrics.jsonl: one JSON object per line (docs/FORMATS.md), appended and flushed line by line.
//
// A run that continues from a checkpoint at step S drops what was logged after S (and a last
// line torn by a kill), so the file reads as one run. The file is never truncated or rewritten
// in place: when lines must go, the kept ones are written to a temporary file that replaces it
// (core/atomic_file.h), so a kill at any moment leaves the whole old history or the new one.
#pragma once
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>

namespace coil::train {

// Drops the lines of `path` logged past `step` and a torn last line; a file with nothing to
// drop (or none at all) is left untouched. Returns the number of lines dropped.
// `after_line` (tests): called after each kept line is written to the temporary file.
int64_t drop_metrics_after(const std::string& path, int64_t step,
                           const std::function<void(int64_t lines_written)>& after_line = nullptr);

class MetricsLog {
 public:
  // Continues the file of a run that resumes at `step` (0: a run starting from scratch) with a
  // start record: {"step": step, "coil_version": ...}.
  MetricsLog(const std::string& path, int64_t step);
  void write(const std::string& json);

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace coil::train
