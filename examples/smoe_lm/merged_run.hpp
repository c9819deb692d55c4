#pragma once
// What the merged runs share: the routing layout, the routers and the assembly of a merged model from a policy
// store (examples/smoe_lm/experts.hpp), then the training loop.

#include <camex/camex.hpp>

#include <functional>
#include <memory>

#include "experts.hpp"
#include "train.hpp"

namespace camex::examples {

using TrainScalar = float;
using TrainSpace = Kokkos::DefaultExecutionSpace;

inline RoutingLayout routing_layout(const TrainConfig& c) {
  return {.sequences = c.batch, .length = c.context,
          .granularity = c.routing == "sequence" ? Granularity::sequence : Granularity::causal_segment,
          .segment = c.routing == "sequence" ? c.context : c.segment};
}

/// alpha as given, or the policy's default where 0 was given: 0.5 for domain merging (1 would cancel the base
/// against scores that sum to one), 1 for the rest (the CAMEx code's value).
inline double merge_step(const TrainConfig& c) { return c.alpha > 0 ? c.alpha : c.policy == "domain" ? 0.5 : 1.0; }

/// Router l's initial-weight seed: distinct per router, fixed by --seed.
inline std::uint64_t router_seed(const TrainConfig& c, std::size_t index) { return c.seed * 1000003ull + index; }

inline std::function<std::unique_ptr<NoisyTopKGate<TrainScalar, TrainSpace>>(std::size_t, std::size_t)> noisy_routers(
    const TrainConfig& c) {
  const std::size_t k = c.policy == "smoe" && c.top_k == 0 ? 2 : c.top_k;
  return [c, k](std::size_t inputs, std::size_t index) {
    return std::make_unique<NoisyTopKGate<TrainScalar, TrainSpace>>(
        inputs, c.experts, routing_layout(c),
        NoisyTopKOptions{.k = k, .noisy = c.router_noise, .balance_coefficient = c.aux}, router_seed(c, index));
  };
}

template <class Store, class Policy, class Router>
int train_merged(const TrainConfig& c, const LmData& data, Store& store,
                 const std::function<std::unique_ptr<Router>(std::size_t, std::size_t)>& make_router) {
  const GptShape shape = gpt_shape(c, data.vocab);
  MergedMlpFactory<TrainScalar, TrainSpace, Store, Policy, Router> make_mlp(shape, routing_layout(c), store, make_router);
  using Mlp = typename decltype(make_mlp)::Mlp;
  return train<Mlp>(c, data, [&](std::size_t l) { return make_mlp(l); });
}

/// One independent policy per (layer, tensor), made by `make(problem)`.
template <class Policy, class Router = NoisyTopKGate<TrainScalar, TrainSpace>>
int train_independent(const TrainConfig& c, const LmData& data,
                      const std::function<std::unique_ptr<Policy>(const MergeProblem&)>& make,
                      const std::function<std::unique_ptr<Router>(std::size_t, std::size_t)>& make_router) {
  IndependentPolicies<Policy> store(gpt_shape(c, data.vocab), c.experts, routing_layout(c),
                                    [&](MlpTensor, const MergeProblem& problem) { return make(problem); });
  return train_merged<IndependentPolicies<Policy>, Policy, Router>(c, data, store, make_router);
}

}  // namespace camex::examples
