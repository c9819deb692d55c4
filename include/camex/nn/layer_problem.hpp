#pragma once
// The merge problem of a layer's policy, from the layer's routing layout: the layout states the number of routing
// groups once, and the policies and the router take it from there (docs/layers.md):
//
//   const RoutingLayout layout{...};
//   Ties<float, Space> weights(layer_problem(layout, n, {out, in}), ...);
//   NoisyTopKGate<float, Space> router(in, n, layout, ...);
//   MergedLinear layer(weights, nullptr, router, layout);

#include <cstddef>

#include "camex/merge/concepts.hpp"
#include "camex/route/groups.hpp"

namespace camex {

/// `experts` deltas of `shape` merged for each of the layout's routing groups.
constexpr MergeProblem layer_problem(const RoutingLayout& layout, std::size_t experts, const TensorShape& shape) {
  return {.experts = experts, .groups = layout.groups(), .shape = shape};
}

}  // namespace camex
