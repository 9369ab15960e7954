// A program built against an installed coil: a product (the kernels), a config (yaml-cpp) and a
// checkpoint written and read back (HDF5). Prints the version and the product.
#include <cstdio>
#include <filesystem>

#include "core/version.h"
#include "kernels/matmul.h"
#include "train/checkpoint.h"
#include "train/config.h"

int main(int argc, char** argv) {
  using namespace coil;
  Tensor a = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  std::vector<float> product = kernels::matmul(a, a).to_vector<float>();
  train::Config config = train::parse_config("", "consumer.yaml", {"model.preset=mamba-tiny"});
  train::Checkpoint c;
  c.state.step = 3;
  c.state.config_yaml = config.model.preset;
  c.params = {{"w", a}};
  const std::string path = (std::filesystem::path(argc > 1 ? argv[1] : ".") / "consumer.h5").string();
  train::write_checkpoint(path, c);
  train::Checkpoint back = train::read_checkpoint(path);
  std::printf("coil %s: %g %g %g %g, checkpoint step %lld of %s\n", version_string().c_str(), product[0], product[1],
              product[2], product[3], static_cast<long long>(back.state.step), back.state.config_yaml.c_str());
  return 0;
}
