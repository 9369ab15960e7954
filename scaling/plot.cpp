#include "scaling/plot.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "scaling/sweep.h"

namespace coil::scaling {
namespace fs = std::filesystem;

std::string find_script(const std::string& name, const PlotOptions& o) {
  std::vector<fs::path> dirs;
  if (!o.scripts_dir.empty()) {
    dirs.push_back(o.scripts_dir);
  } else if (const char* e = std::getenv("COIL_SCRIPTS_DIR")) {
    dirs.push_back(e);
  } else {
    // Next to the sources this file was compiled from (a build tree on the machine that built
    // it), above the executable (an install or build directory inside the tree), here.
    dirs.push_back(fs::path(__FILE__).parent_path().parent_path() / "scripts");
    std::error_code ec;
    fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec)
      for (fs::path d = exe.parent_path(); !d.empty() && d != d.root_path(); d = d.parent_path())
        dirs.push_back(d / "scripts");
    dirs.push_back(fs::current_path(ec) / "scripts");
  }
  std::error_code ec;
  for (auto& d : dirs)
    if (fs::exists(d / name, ec)) return (d / name).string();
  return "";
}

int run_command(const std::string& command, std::string& output) {
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) output.append(buf, n);
  int status = ::pclose(p);
  if (status == -1) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

PlotResult run_plot_script(const std::string& script, const std::vector<std::string>& args, const PlotOptions& o) {
  PlotResult r;
  const std::string path = find_script(script, o);
  if (path.empty()) {
    r.problem = fmt::format("scripts/{} not found (set COIL_SCRIPTS_DIR to coil's scripts/ folder)", script);
    return r;
  }
  std::vector<std::string> pythons;
  if (!o.python.empty()) {
    pythons.push_back(o.python);
  } else {
    if (const char* e = std::getenv("COIL_PYTHON")) pythons.push_back(e);
    pythons.push_back("python3");
    std::error_code ec;
    if (fs::exists("/usr/bin/python3", ec)) pythons.push_back("/usr/bin/python3");
  }
  std::string skipped;  // why each Python could not draw
  for (const auto& python : pythons) {
    r.command = shell_quote(python) + " " + shell_quote(path);
    for (const auto& a : args) r.command += " " + shell_quote(a);
    r.output.clear();
    r.exit_code = run_command(r.command, r.output);
    while (!r.output.empty() && (r.output.back() == '\n' || r.output.back() == '\r')) r.output.pop_back();
    if (r.exit_code == 3 || r.exit_code == 127) {  // no matplotlib, or no such Python: the next one
      skipped += fmt::format("{}{}: {}", skipped.empty() ? "" : "; ", python,
                             r.exit_code == 127 ? "not found" : r.output.empty() ? "no matplotlib" : r.output);
      continue;
    }
    r.drawn = r.exit_code == 0;
    if (!r.drawn) r.problem = fmt::format("`{}` exited with {}: {}", r.command, r.exit_code, r.output);
    return r;
  }
  r.problem = fmt::format(
      "no python3 with matplotlib ({}); apt-get install python3-matplotlib, or set COIL_PYTHON", skipped);
  return r;
}

}  // namespace coil::scaling
