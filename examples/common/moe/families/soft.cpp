// smoe (the top-k SMoE baseline: no base) and domain merging: no mask, no transform, noisy top-k routers.
#include "common/moe/families.hpp"

namespace camex::examples {

TrainMlps soft_mlps(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape) {
  using Policy = ComposedPolicy<TrainScalar, TrainSpace, NoMask, IdentityTransform>;
  const PolicyRule& rule = policy_rule(m.policy);
  return independent_mlps<Policy>(m, seed, shape, [&](const MergeProblem& p) -> std::unique_ptr<Policy> {
    if (rule.base == "none") return std::make_unique<Euclidean<TrainScalar, TrainSpace>>(p);
    return std::make_unique<Domain<TrainScalar, TrainSpace>>(p, MergeOptions{.alpha = merge_step(rule, m.alpha)});
  });
}

}  // namespace camex::examples
