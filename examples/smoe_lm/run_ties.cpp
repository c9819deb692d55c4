#include "merged_run.hpp"
#include "runs.hpp"

namespace camex::examples {

int run_ties(const TrainConfig& c, const LmData& data) {
  using Policy = Ties<TrainScalar, TrainSpace>;
  return train_independent<Policy>(
      c, data, [&](const MergeProblem& p) {
        TiesMask mask;
        mask.options.density = c.density;
        return std::make_unique<Policy>(p, mask, MergeOptions{.alpha = merge_step(c)});
      },
      noisy_routers(c));
}

}  // namespace camex::examples
