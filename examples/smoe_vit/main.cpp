// smoe_vit: trains a vision transformer whose MLP linears merge their experts with any camex policy (or a dense
// baseline) on Fashion-MNIST, with its own autodiff (examples/common), and reports validation and test accuracy,
// a confusion matrix, curves (CSV and PNG) and checkpoints. `smoe_vit --help` lists every option.
#include <Kokkos_Core.hpp>

#include <cstdio>
#include <exception>

#include "common/moe/families.hpp"
#include "common/vision/image_set.hpp"
#include "common/train/trainer_main.hpp"
#include "task.hpp"

namespace camex::examples {
namespace {

int run(const VitConfig& c, const Ranks& ranks) {
  VitTask task(c, load_fashion_mnist(c.task.data, c.task.valid_images), ranks);
  const VitShape& shape = task.shape();
  const MlpShape mlp{shape.channels, shape.hidden, shape.activation};
  // The merged MLPs' policies and routers outlive the model; blocks without experts get dense MLPs.
  TrainMlps merged;
  std::vector<bool> in_block(shape.layers, false);
  if (policy_rule(c.merge.policy).experts) {
    merged = mlps_for(c.merge, c.optimiser.seed, vit_moe_shape(c, shape));
    in_block = merged_blocks(c.task.moe_layers, shape.layers);
  }
  std::size_t next_merged = 0;
  const auto make_mlp = [&](std::size_t l) -> std::unique_ptr<MlpLayer<TrainScalar, TrainSpace>> {
    if (in_block[l]) return merged.make(next_merged++);
    return std::make_unique<DenseMlp<TrainScalar, TrainSpace>>(mlp, shape.tokens());
  };
  return train(task, std::make_unique<VitTask::Model>(shape, make_mlp), VitTask::dump_format, ranks);
}

}  // namespace
}  // namespace camex::examples

int main(int argc, char** argv) {
  return camex::examples::trainer_main("smoe_vit", argc, argv, camex::examples::vit_defaults(),
                                       [](int c, char** v, camex::examples::VitConfig& config) {
                                         return camex::examples::parse_command_line(c, v, config);
                                       },
                                       camex::examples::run);
}
