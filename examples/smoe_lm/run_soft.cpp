// smoe and domain: no mask, no transform. smoe merges the router's top-k experts without a base (Euclidean);
// domain steps from a base parameter by alpha.
#include "merged_run.hpp"
#include "runs.hpp"

namespace camex::examples {

int run_soft(const TrainConfig& c, const LmData& data) {
  using Policy = ComposedPolicy<TrainScalar, TrainSpace, NoMask, IdentityTransform>;
  return train_independent<Policy>(
      c, data,
      [&](const MergeProblem& p) -> std::unique_ptr<Policy> {
        if (c.policy == "smoe") return std::make_unique<Euclidean<TrainScalar, TrainSpace>>(p);
        return std::make_unique<Domain<TrainScalar, TrainSpace>>(p, MergeOptions{.alpha = merge_step(c)});
      },
      noisy_routers(c));
}

}  // namespace camex::examples
