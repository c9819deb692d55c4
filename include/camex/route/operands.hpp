#pragma once
// The operand checks every built-in router's forward and backward run (route/concepts.hpp), written once.

#include <cstddef>

#include "camex/core/error.hpp"
#include "camex/core/views.hpp"

namespace camex::detail {

/// forward: routed [G, inputs] with 1 <= G <= max_groups, scores [G, experts].
template <RowMajorMatrix Routed, RowMajorMatrix Scores>
void require_router_operands(const char* fn, const Routed& routed, const Scores& scores, std::size_t max_groups,
                             std::size_t inputs, std::size_t experts) {
  require_nonempty(fn, "routed", routed, "[G, I] matrix of router inputs");
  if (routed.extent(0) > max_groups)
    throw argument_error(fn, "routed", concat("at most max_groups = ", max_groups, " rows"), concat("shape ", shape_of(routed)));
  require_shape(fn, "routed", routed, routed.extent(0), inputs, "[G, I] with I the router's input width");
  require_shape(fn, "scores", scores, routed.extent(0), experts, "[G, n] (routed.extent(0), experts())");
}

/// backward: a forward has run, d_scores [G, experts] and d_routed [G, inputs] with G of that forward.
template <RowMajorMatrix DScores, RowMajorMatrix DRouted>
void require_router_gradients(const char* fn, bool forwarded, const DScores& d_scores, const DRouted& d_routed,
                              std::size_t groups, std::size_t inputs, std::size_t experts) {
  if (!forwarded) throw argument_error(fn, "this", "a router whose forward has run", "no forward yet");
  require_shape(fn, "d_scores", d_scores, groups, experts, "[G, n], G of the last forward");
  require_shape(fn, "d_routed", d_routed, groups, inputs, "[G, I], G of the last forward");
}

}  // namespace camex::detail
