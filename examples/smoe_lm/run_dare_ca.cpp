#include "merged_run.hpp"
#include "runs.hpp"

namespace camex::examples {

int run_dare_ca(const TrainConfig& c, const LmData& data) {
  using Policy = DareCA<TrainScalar, TrainSpace>;
  return train_independent<Policy>(
      c, data, [&](const MergeProblem& p) {
        return std::make_unique<Policy>(p, DareMask{.drop = c.drop}, CurvatureOptions{.rank = c.rank}, MergeOptions{.alpha = merge_step(c)});
      },
      noisy_routers(c));
}

}  // namespace camex::examples
