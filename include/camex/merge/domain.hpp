#pragma once
// Domain-specific merging (docs/algorithms.md §4.2): merged_b = base + alpha sum_i s[b, i] (E_i - base).
// With alpha = 1 and scores summing to 1 the base cancels; merge and backward reject that case unless
// MergeOptions::on_degenerate says to accept it.

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/composed.hpp"

namespace camex {

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class Domain : public ComposedPolicy<Scalar, ExecSpace, NoMask, IdentityTransform> {
 public:
  explicit Domain(const MergeProblem& problem, const MergeOptions& options = {})
      : ComposedPolicy<Scalar, ExecSpace, NoMask, IdentityTransform>("camex::Domain", problem, options, {}, {}) {}
};

}  // namespace camex
