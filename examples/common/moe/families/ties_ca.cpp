// TIES-CA: TIES masks, then the curvature transform.
#include "common/moe/families.hpp"

namespace camex::examples {

TrainMlps ties_ca_mlps(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape) {
  using Policy = TiesCA<TrainScalar, TrainSpace>;
  const double alpha = merge_step(policy_rule(m.policy), m.alpha);
  return independent_mlps<Policy>(m, seed, shape, [&](const MergeProblem& p) {
    TiesMask mask;
    mask.options.density = m.density;
    return std::make_unique<Policy>(p, mask, CurvatureOptions{.rank = m.rank}, MergeOptions{.alpha = alpha});
  });
}

}  // namespace camex::examples
