#pragma once
// TIES merging (spec §4.3): merged_b = base + alpha sum_i s[b, i] f_i .* (E_i - base), with f the TIES factor
// (merge/axis/ties.hpp: the standard mergekit TIES by default, the CAMEx code's sign agreement as a variant);
// and TIES-CA, the same mask composed with the curvature transform.

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/axis/curvature.hpp"
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

/// TIES-CA: merged_b = base + alpha sum_i s[b, i] M_i(f_i .* tau_i) with the standard mask, or
/// base + alpha sum_i s[b, i] m_i .* M_i(tau_i) with the CAMEx code's sign agreement (TiesVariant::sign_agreement).
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class TiesCA : public ComposedPolicy<Scalar, ExecSpace, TiesMask, CurvatureTransform<Scalar, ExecSpace>> {
 public:
  explicit TiesCA(const MergeProblem& problem, TiesMask mask = {}, const CurvatureOptions& curvature = {},
                  const Composition& composition = {})
      : ComposedPolicy<Scalar, ExecSpace, TiesMask, CurvatureTransform<Scalar, ExecSpace>>(
            "camex::TiesCA", problem, composition, std::move(mask), CurvatureTransform<Scalar, ExecSpace>(problem, curvature)) {}
};

}  // namespace camex
