// Dynamic merging: each tensor kind's policies chained through the merged layers.
#include "common/moe/families.hpp"

namespace camex::examples {

TrainMlps dynamic_mlps(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape) {
  using Store = ChainedPolicies<TrainScalar, TrainSpace>;
  auto chains = std::make_shared<Store>(
      shape, DynamicOptions{.gamma = m.gamma, .alpha = merge_step(policy_rule(m.policy), m.alpha), .curvature = {.rank = m.rank}});
  return merged_mlps<Store, DynamicChain<TrainScalar, TrainSpace>::Layer, NoisyTopKGate<TrainScalar, TrainSpace>>(
      chains, shape,
      std::function<std::unique_ptr<NoisyTopKGate<TrainScalar, TrainSpace>>(std::size_t, std::size_t)>(noisy_routers(m, seed, shape)));
}

}  // namespace camex::examples
