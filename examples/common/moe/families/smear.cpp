// SMEAR: the Euclidean merge of every expert with SMEAR's softmax router.
#include "common/moe/families.hpp"

namespace camex::examples {

TrainMlps smear_mlps(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape) {
  using Policy = ComposedPolicy<TrainScalar, TrainSpace, NoMask, IdentityTransform>;
  using Router = SmearRouter<TrainScalar, TrainSpace>;
  auto store = std::make_shared<IndependentPolicies<Policy>>(
      shape, [](MlpTensor, const MergeProblem& p) -> std::unique_ptr<Policy> {
        return std::make_unique<Euclidean<TrainScalar, TrainSpace>>(p);
      });
  const std::size_t experts = m.experts;
  return merged_mlps<IndependentPolicies<Policy>, Policy, Router>(
      store, shape, std::function<std::unique_ptr<Router>(std::size_t, std::size_t)>([=](std::size_t inputs, std::size_t index) {
        return std::make_unique<Router>(inputs, experts, shape.layout, SmearRouterOptions{}, router_seed(seed, index));
      }));
}

}  // namespace camex::examples
