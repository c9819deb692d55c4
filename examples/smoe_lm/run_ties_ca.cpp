#include "merged_run.hpp"
#include "runs.hpp"

namespace camex::examples {

int run_ties_ca(const TrainConfig& c, const LmData& data) {
  using Policy = TiesCA<TrainScalar, TrainSpace>;
  return train_independent<Policy>(
      c, data, [&](const MergeProblem& p) {
        TiesMask mask;
        mask.options.density = c.density;
        return std::make_unique<Policy>(p, mask, CurvatureOptions{.rank = c.rank}, MergeOptions{.alpha = merge_step(c)});
      },
      noisy_routers(c));
}

}  // namespace camex::examples
