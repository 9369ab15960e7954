#include <filesystem>
#include <fstream>

#include "scaling/sweep.h"
#include "tests/catch.h"

using namespace coil::scaling;
namespace fs = std::filesystem;

namespace {
std::string write_file(const std::string& name, const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / "coil_test_sweep";
  std::filesystem::create_directories(dir);
  auto path = dir / name;
  std::ofstream(path) << text;
  return path.string();
}
}  // namespace

TEST_CASE("a sweep expands into the product of its axes, zipping keys within an axis", "[sweep]") {
  std::string path = write_file("grid.yaml", R"(base: ../base.yaml
out_dir: runs/grid
set: {train.steps: 50}
axes:
  - model.preset: [mamba-tiny, transformer++-tiny]
    optim.lr: [3e-3, 1e-3]
  - train.seed: [1, 2, 3]
)");
  Sweep s = load_sweep(path);
  REQUIRE(s.runs.size() == 6);
  REQUIRE(s.base_config == (std::filesystem::temp_directory_path() / "base.yaml").lexically_normal().string());
  REQUIRE(s.runs[0].name == "mamba-tiny_1");
  REQUIRE(s.runs[5].name == "transformer++-tiny_3");
  REQUIRE(s.runs[4].run_dir == "runs/grid/transformer++-tiny_2");
  using KV = std::pair<std::string, std::string>;
  REQUIRE(s.runs[4].overrides == std::vector<KV>{{"train.steps", "50"}, {"model.preset", "transformer++-tiny"},
                                                 {"optim.lr", "1e-3"}, {"train.seed", "2"}});
}

TEST_CASE("sweep errors name the file, the line and the key", "[sweep]") {
  REQUIRE_THROWS_WITH(load_sweep(write_file("zip.yaml", "base: b.yaml\naxes:\n  - {a.b: [1, 2], c.d: [1]}\n")),
                      Catch::Matchers::Contains("zip.yaml:3: axis key 'c.d' has 1 values"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("empty.yaml", "base: b.yaml\naxes: []\n")),
                      Catch::Matchers::Contains("expands to nothing"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("nothing.yaml", "base: b.yaml\naxes:\n  - {train.seed: []}\n")),
                      Catch::Matchers::Contains("nothing.yaml:3: axis key 'train.seed' needs a non-empty list"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("unknown.yaml", "base: b.yaml\ngird: []\n")),
                      Catch::Matchers::Contains("unknown.yaml:2: unknown key 'gird'"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("nobase.yaml", "axes: []\n")), Catch::Matchers::Contains("'base'"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("dup.yaml", "base: b.yaml\naxes:\n  - {a: [x, x]}\n")),
                      Catch::Matchers::Contains("both named 'x'"));
  REQUIRE_THROWS_WITH(load_sweep(write_file("twice.yaml", "base: b.yaml\nset: {train.seed: 1}\naxes:\n  - {train.seed: [2, 3]}\n")),
                      Catch::Matchers::Contains("twice.yaml:4: key 'train.seed' is already given at line 2"));
  REQUIRE_THROWS_WITH(load_sweep("/nonexistent/sweep.yaml"), Catch::Matchers::Contains("cannot read"));
}

TEST_CASE("a sweep key that no config has names the sweep file, its line and the run", "[sweep]") {
  const fs::path dir = std::filesystem::temp_directory_path() / "coil_test_sweep" / "badkey";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "base.yaml") << "model: {preset: mamba-tiny}\n";
  std::ofstream(dir / "bad.yaml") << "base: base.yaml\nout_dir: " << (dir / "runs").string() << R"(
axes:
  - model.preset: [mamba-tiny, transformer++-tiny]
  - model.d_modle: [16, 32]
)";
  Sweep s = load_sweep((dir / "bad.yaml").string());
  REQUIRE(s.runs.size() == 4);
  REQUIRE_THROWS_WITH(check_sweep(s), Catch::Matchers::Contains("bad.yaml:5: run 'mamba-tiny_16'") &&
                                          Catch::Matchers::Contains("unknown key 'model.d_modle'") &&
                                          Catch::Matchers::Contains("did you mean 'model.d_model'"));
  // A bad value: the run and the key.
  std::ofstream(dir / "badvalue.yaml") << "base: base.yaml\nout_dir: runs\nset: {train.steps: many}\naxes:\n  - {train.seed: [1]}\n";
  REQUIRE_THROWS_WITH(check_sweep(load_sweep((dir / "badvalue.yaml").string())),
                      Catch::Matchers::Contains("badvalue.yaml:3: run 'run'") && Catch::Matchers::Contains("train.steps"));
}
