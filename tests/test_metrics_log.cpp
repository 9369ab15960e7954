// metrics.jsonl on resume: lines past the checkpoint go, and a kill at any moment of that
// leaves the whole history.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "core/version.h"
#include "tests/catch.h"
#include "tests/files.h"
#include "train/metrics_log.h"

using namespace coil;
using namespace coil::train;
namespace fs = std::filesystem;

namespace {

ino_t inode(const fs::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_ino;
}

std::string history(int64_t steps) {
  std::string text;
  for (int64_t s = 1; s <= steps; ++s) {
    text += "{\"step\":" + std::to_string(s) + ",\"tokens\":" + std::to_string(64 * s) + ",\"loss\":2.5}\n";
    if (s % 100 == 0) text += "{\"step\":" + std::to_string(s) + ",\"tokens\":0,\"val_loss\":2.4,\"val_ppl\":11}\n";
  }
  return text;
}

}  // namespace

TEST_CASE("a kill while metrics.jsonl is rewritten on resume loses no line", "[metrics]") {
  const fs::path dir = test::fresh_dir("coil_test_metrics", "kill");
  const fs::path path = dir / "metrics.jsonl";
  const std::string before = history(20000);
  test::write_text(path, before);

  // A resume from step 15000 drops 5000 steps of lines; the process is killed (SIGKILL) half
  // way through writing the kept ones.
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    drop_metrics_after(path.string(), 15000, [](int64_t lines) {
      if (lines == 7000) raise(SIGKILL);
    });
    _exit(0);
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);
  REQUIRE(test::read_text(path) == before);  // every line is still there

  // The resume that runs to the end keeps exactly the lines up to step 15000.
  REQUIRE(drop_metrics_after(path.string(), 15000) == 5000 + 50);
  REQUIRE(test::read_text(path) == history(15000));
  REQUIRE(!fs::exists(path.string() + ".tmp"));
}

TEST_CASE("metrics.jsonl: nothing to drop leaves the file alone; a torn last line goes", "[metrics]") {
  const fs::path dir = test::fresh_dir("coil_test_metrics", "torn");
  const fs::path path = dir / "metrics.jsonl";
  test::write_text(path, history(30));
  const ino_t original = inode(path);
  REQUIRE(drop_metrics_after(path.string(), 30) == 0);
  REQUIRE(inode(path) == original);  // not replaced
  REQUIRE(drop_metrics_after((dir / "none.jsonl").string(), 5) == 0);  // no file: nothing
  REQUIRE(!fs::exists(dir / "none.jsonl"));

  // A kill in the middle of a line leaves it without its newline: it goes, the rest stays.
  test::write_text(path, history(30) + "{\"step\":31,\"tok");
  REQUIRE(drop_metrics_after(path.string(), 40) == 1);
  REQUIRE(test::read_text(path) == history(30));

  // Continuing appends after the kept lines: a start record (the step and the version), then
  // the new lines.
  {
    MetricsLog log(path.string(), 20);
    log.write("{\"step\":21,\"tokens\":1344,\"loss\":2}");
  }
  REQUIRE(test::read_text(path) == history(20) + "{\"step\":20,\"coil_version\":\"" + version_string() + "\"}\n" +
                                       "{\"step\":21,\"tokens\":1344,\"loss\":2}\n");
}
