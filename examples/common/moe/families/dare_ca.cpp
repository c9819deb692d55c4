// DARE-CA: DARE, then the curvature transform.
#include "common/moe/families.hpp"

namespace camex::examples {

TrainMlps dare_ca_mlps(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape) {
  using Policy = DareCA<TrainScalar, TrainSpace>;
  const double alpha = merge_step(policy_rule(m.policy), m.alpha);
  return independent_mlps<Policy>(m, seed, shape, [&](const MergeProblem& p) {
    return std::make_unique<Policy>(p, DareMask{.drop = m.drop}, CurvatureOptions{.rank = m.rank}, MergeOptions{.alpha = alpha});
  });
}

}  // namespace camex::examples
