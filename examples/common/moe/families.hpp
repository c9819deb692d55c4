#pragma once
// What a policy builds for a model: the MLP of each merged layer, and the library components (policies, routers)
// those MLPs reference. One builder per family of policies.json, each compiled in its own file
// (common/moe/families/*.cpp, shared by every trainer) so the policies' instantiations build in parallel and once;
// mlps_for picks the builder the registry names.

#include <camex/camex.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/moe/registry.hpp"
#include "common/moe/stores.hpp"
#include "common/nn/mlp.hpp"
#include "common/train/config.hpp"

namespace camex::examples {

/// make(l) builds merged layer l's MLP; `components` owns what the MLPs reference (keep it while they live).
template <class T, class Space>
struct MlpSource {
  std::function<std::unique_ptr<MlpLayer<T, Space>>(std::size_t layer)> make;
  std::shared_ptr<void> components;
};

using TrainMlps = MlpSource<TrainScalar, TrainSpace>;

/// Router `index`'s initial-weight seed: distinct per router, fixed by --seed.
inline std::uint64_t router_seed(std::uint64_t seed, std::size_t index) { return seed * 1000003ull + index; }

/// Noisy top-k routers over the shape's layout, k from the policy's rule.
inline auto noisy_routers(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape) {
  const std::size_t k = router_top_k(policy_rule(m.policy), m.top_k);
  return [m, seed, shape, k](std::size_t inputs, std::size_t index) {
    return std::make_unique<NoisyTopKGate<TrainScalar, TrainSpace>>(
        inputs, shape.experts, shape.layout,
        NoisyTopKOptions{.k = k, .noisy = m.router_noise, .balance_coefficient = m.aux}, router_seed(seed, index));
  };
}

/// The MLPs of `Store`'s policies with routers from make_router; the store and the factory become the components.
template <class Store, class Policy, class Router, class MakeRouter>
TrainMlps merged_mlps(std::shared_ptr<Store> store, const MoeShape& shape, const MakeRouter& make_router) {
  using Factory = MergedMlpFactory<TrainScalar, TrainSpace, Store, Policy, Router>;
  auto factory = std::make_shared<Factory>(shape, *store, make_router);
  auto components = std::make_shared<std::pair<std::shared_ptr<Store>, std::shared_ptr<Factory>>>(store, factory);
  return {[factory](std::size_t l) -> std::unique_ptr<MlpLayer<TrainScalar, TrainSpace>> { return (*factory)(l); },
          components};
}

/// One independent policy per (layer, tensor), made by `make(problem)`, with noisy top-k routers.
template <class Policy, class Make>
TrainMlps independent_mlps(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape, const Make& make) {
  auto store = std::make_shared<IndependentPolicies<Policy>>(shape, [&](MlpTensor, const MergeProblem& p) { return make(p); });
  return merged_mlps<IndependentPolicies<Policy>, Policy, NoisyTopKGate<TrainScalar, TrainSpace>>(
      store, shape, std::function<std::unique_ptr<NoisyTopKGate<TrainScalar, TrainSpace>>(std::size_t, std::size_t)>(
                        noisy_routers(m, seed, shape)));
}

// The builders, one per family (common/moe/families/<family>.cpp).
TrainMlps soft_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);  ///< smoe, domain
TrainMlps smear_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);
TrainMlps ties_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);
TrainMlps ties_ca_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);
TrainMlps dare_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);
TrainMlps dare_ca_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);
TrainMlps ca_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);
TrainMlps dynamic_mlps(const MergeConfig&, std::uint64_t seed, const MoeShape&);

/// The merged MLPs of policy m.policy (one with experts).
inline TrainMlps mlps_for(const MergeConfig& m, std::uint64_t seed, const MoeShape& shape) {
  using Builder = TrainMlps (*)(const MergeConfig&, std::uint64_t, const MoeShape&);
  static const std::map<std::string, Builder> builders{
      {"soft", soft_mlps}, {"smear", smear_mlps}, {"ties", ties_mlps},       {"ties-ca", ties_ca_mlps},
      {"dare", dare_mlps}, {"dare-ca", dare_ca_mlps}, {"ca", ca_mlps}, {"dynamic", dynamic_mlps}};
  const PolicyRule& rule = policy_rule(m.policy);
  const auto found = builders.find(rule.family);
  if (found == builders.end())
    throw config_error("policies.json gives policy '" + rule.name + "' the family '" + rule.family +
                       "', which no builder of common/moe/families.hpp makes");
  return found->second(m, seed, shape);
}

}  // namespace camex::examples
