#pragma once
// What a merge policy is. A policy merges the n experts of one parameter tensor (a weight or a bias of one layer,
// flattened to P entries) into one tensor per routing group, and differentiates that merge. Built-in policies and
// a user's own go through the same driver (merge/driver.hpp) and the same layers, so this header is the contract.
//
// A training step with a policy `p` for one tensor runs
//   bytes = p.workspace_bytes()                             once, before the first step; allocate that much
//   p.prepare(space, step, experts, base, workspace)        once per step, input-independent (deltas, masks, tau~)
//   p.merge(space, scores, merged, workspace)               per batch of routing groups, any number of times
//   p.backward(space, scores, d_merged, d_scores, d_experts, d_base, workspace)
// and the workspace carries the prepared state from `prepare` to `merge` and `backward` of the same step.
// `backward` overwrites d_scores, d_experts and d_base and the gradients of the policy's own parameters, which
// `parameters()` lists beside their values (so an optimiser, or a finite-difference check, can reach them).

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <ranges>
#include <string>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"

namespace camex {

/// The logical shape of the tensor being merged: `rows x cols` (O x I for a weight, O x 1 for a bias). Kernels
/// see it flattened row-major to P = rows * cols entries; transforms that act per dimension (curvature) use it.
struct TensorShape {
  std::size_t rows = 0;
  std::size_t cols = 1;
  constexpr std::size_t params() const { return rows * cols; }
  friend constexpr bool operator==(const TensorShape&, const TensorShape&) = default;
};

/// Sizes a policy is set up for: `experts` deltas (n, the base not counted), at most `groups` routing groups per
/// merge call, one tensor of `shape`.
struct MergeProblem {
  std::size_t experts = 0;
  std::size_t groups = 0;
  TensorShape shape;
};

/// Where a policy's base expert comes from (docs/algorithms.md §8.2).
enum class BaseSource {
  none,       ///< no base: the deltas are the experts themselves (tau_i = E_i; SMEAR); the base operand is empty
  parameter,  ///< a separate base tensor E_m, passed as `base` ([1, P]); it gets a gradient
  expert,     ///< one of the experts (`base_expert`); the base operand is empty, its gradient goes to that expert
  propagated, ///< computed from the previous layer of a chain (dynamic merging); base and d_base are empty
};

/// A merge policy over Scalar on ExecSpace (see the top of this header for the call sequence).
///   experts [n, P], base [1, P] or empty ([0, 0]) as uses_base() says, scores [B, n], merged [B, P];
///   backward: d_merged [B, P] in, d_scores [B, n], d_experts [n, P], d_base like base, out.
template <class P>
concept MergePolicy =
    std::floating_point<typename P::scalar_type> && Kokkos::is_execution_space<typename P::execution_space>::value &&
    requires(P& policy, const P& cpolicy, const typename P::execution_space& space, const MergeProblem& problem,
             const StepContext& step, const Workspace<typename P::execution_space>& workspace,
             const ConstMatrix<typename P::scalar_type, typename P::execution_space>& in,
             const Matrix<typename P::scalar_type, typename P::execution_space>& out) {
      { cpolicy.problem() } -> std::convertible_to<MergeProblem>;
      { cpolicy.workspace_bytes() } -> std::convertible_to<std::size_t>;
      { cpolicy.base_source() } -> std::same_as<BaseSource>;
      policy.prepare(space, step, in, in, workspace);
      policy.merge(space, in, out, workspace);
      policy.backward(space, in, in, out, out, out, workspace);
      { policy.parameters() } -> std::ranges::range;
      requires std::same_as<std::ranges::range_value_t<decltype(policy.parameters())>,
                            Parameter<typename P::scalar_type, typename P::execution_space>>;
    };

namespace detail {

/// Throws unless `scores` is [B, problem.experts] with 1 <= B <= problem.groups.
template <RowMajorMatrix V>
void require_scores_shape(const char* function, const V& scores, const MergeProblem& problem) {
  if (scores.extent(0) == 0 || scores.extent(0) > problem.groups || scores.extent(1) != problem.experts)
    throw argument_error(function, "scores",
                         concat("shape [B, ", problem.experts, "] with 1 <= B <= problem().groups = ", problem.groups),
                         shape_of(scores));
}

/// Throws unless `base` (or d_base) fits a policy whose base comes from `source`: [1, params] for a parameter,
/// empty otherwise.
template <RowMajorMatrix V>
void require_base_operand(const char* function, const char* name, const V& base, BaseSource source, std::size_t params) {
  if (source == BaseSource::parameter) {
    require_shape(function, name, base, 1, params, "[1, P] (the policy's base is a parameter)");
    return;
  }
  if (base.size() == 0) return;
  const char* why = source == BaseSource::none     ? "an empty view (the policy merges without a base)"
                    : source == BaseSource::expert ? "an empty view (the policy's base is one of the experts)"
                                                   : "an empty view (the base of a later layer is propagated)";
  throw argument_error(function, name, why, shape_of(base));
}

}  // namespace detail
}  // namespace camex
