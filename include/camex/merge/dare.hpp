#pragma once
// DARE merging (docs/algorithms.md §4.4): merged_b = base + alpha sum_i kappa[b, i] s[b, i] f_i .* (E_i - base), with the
// random drop-and-rescale of merge/axis/dare.hpp (element-level by default, the CAMEx code's Drop2d as an option);
// and DARE-CA, the same mask composed with the curvature transform.

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/axis/curvature.hpp"
#include "camex/merge/axis/dare.hpp"
#include "camex/merge/composed.hpp"

namespace camex {

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class Dare : public ComposedPolicy<Scalar, ExecSpace, DareMask, IdentityTransform> {
 public:
  explicit Dare(const MergeProblem& problem, DareMask mask = {}, const MergeOptions& options = {})
      : ComposedPolicy<Scalar, ExecSpace, DareMask, IdentityTransform>("camex::Dare", problem, options,
                                                                        std::move(mask), {}) {}
};

/// DARE-CA: merged_b = base + alpha sum_i kappa[b, i] s[b, i] M_i(f_i .* tau_i). With DareGranularity::expert
/// this is the CAMEx code's "dare": Drop2d over the gated, curvature-transformed deltas.
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class DareCA : public ComposedPolicy<Scalar, ExecSpace, DareMask, CurvatureTransform<Scalar, ExecSpace>> {
 public:
  explicit DareCA(const MergeProblem& problem, DareMask mask = {}, const CurvatureOptions& curvature = {},
                  const MergeOptions& options = {})
      : ComposedPolicy<Scalar, ExecSpace, DareMask, CurvatureTransform<Scalar, ExecSpace>>(
            "camex::DareCA", problem, options, std::move(mask), CurvatureTransform<Scalar, ExecSpace>(problem, curvature)) {}
};

}  // namespace camex
