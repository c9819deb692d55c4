#pragma once
// TIES merging (spec §4.3): merged_b = base + alpha sum_i s[b, i] f_i .* (E_i - base), with f the TIES factor
// (merge/axis/ties.hpp: the standard mergekit TIES by default, the CAMEx code's sign agreement as a variant).

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/axis/ties.hpp"
#include "camex/merge/composed.hpp"

namespace camex {

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class Ties : public ComposedPolicy<Scalar, ExecSpace, TiesMask, IdentityTransform> {
 public:
  explicit Ties(const MergeProblem& problem, TiesMask mask = {}, const Composition& composition = {})
      : ComposedPolicy<Scalar, ExecSpace, TiesMask, IdentityTransform>("camex::Ties", problem, composition,
                                                                        std::move(mask), {}) {}
};

}  // namespace camex
