// SMEAR: every expert averaged by the softmax of SMEAR's router (camex::SmearRouter), no base.
#include "merged_run.hpp"
#include "runs.hpp"

namespace camex::examples {

int run_smear(const TrainConfig& c, const LmData& data) {
  using Policy = ComposedPolicy<TrainScalar, TrainSpace, NoMask, IdentityTransform>;
  using Router = SmearRouter<TrainScalar, TrainSpace>;
  return train_independent<Policy, Router>(
      c, data, [](const MergeProblem& p) -> std::unique_ptr<Policy> { return std::make_unique<Euclidean<TrainScalar, TrainSpace>>(p); },
      [c](std::size_t inputs, std::size_t index) {
        return std::make_unique<Router>(inputs, c.experts, routing_layout(c), SmearRouterOptions{}, router_seed(c, index));
      });
}

}  // namespace camex::examples
