#pragma once
// DARE-TIES (mergekit's dare_ties): DARE's random drop and rescale of each delta, then TIES's sign election and
// (optionally) disjoint mean over the survivors: merged_b = base + alpha sum_i kappa[b, i] s[b, i] f2_i(m) .* m_i,
// m_i = f1_i .* (E_i - base). A composition: MaskSequence<DareMask, TiesMask> with the identity transform.

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/axis/dare.hpp"
#include "camex/merge/axis/sequence.hpp"
#include "camex/merge/axis/ties.hpp"
#include "camex/merge/composed.hpp"

namespace camex {

using DareTiesMask = MaskSequence<DareMask, TiesMask>;

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class DareTies : public ComposedPolicy<Scalar, ExecSpace, DareTiesMask, IdentityTransform> {
 public:
  explicit DareTies(const MergeProblem& problem, DareTiesMask mask = {}, const MergeOptions& options = {})
      : ComposedPolicy<Scalar, ExecSpace, DareTiesMask, IdentityTransform>("camex::DareTies", problem, options,
                                                                            std::move(mask), {}) {}
};

}  // namespace camex
