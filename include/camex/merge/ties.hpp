#pragma once
// TIES merging (docs/algorithms.md §4.3): merged_b = base + alpha sum_i s[b, i] f_i .* (E_i - base), with f the TIES factor
// (merge/axis/ties.hpp: the standard mergekit TIES by default, the CAMEx code's sign agreement as a variant);
// and TIES-CA, the same mask composed with the curvature transform.

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstdint>

#include "camex/merge/axis/curvature.hpp"
#include "camex/merge/axis/ties.hpp"
#include "camex/merge/composed.hpp"

namespace camex {

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class Ties : public ComposedPolicy<Scalar, ExecSpace, TiesMask, IdentityTransform> {
  using Base = ComposedPolicy<Scalar, ExecSpace, TiesMask, IdentityTransform>;

 public:
  explicit Ties(const MergeProblem& problem, TiesMask mask = {}, const MergeOptions& options = {})
      : Base("camex::Ties", problem, options, std::move(mask), {}) {}

  /// This step's trim [n, P] (1: among the expert's kept magnitudes), in a new array: the policy keeps only each
  /// expert's threshold and where its ties stop, and tests them on the deltas. Valid after prepare, for the
  /// standard variant.
  Kokkos::View<std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> kept(
      const ExecSpace& space, const Workspace<ExecSpace>& workspace) {
    require_standard("camex::Ties::kept");
    const auto tau = this->prepared_deltas(space, workspace);
    const detail::TrimBoundary* trim = this->mask_state(workspace).trim.boundaries.data();
    const std::size_t experts = tau.extent(0), params = tau.extent(1);
    Kokkos::View<std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> kept("camex::Ties::kept", experts,
                                                                                             params);
    Kokkos::parallel_for("camex::Ties::kept", Kokkos::RangePolicy<ExecSpace>(space, 0, experts * params),
                         KOKKOS_LAMBDA(std::size_t k) {
                           const std::size_t i = k / params, p = k % params;
                           kept(i, p) = trim[i].selects(detail::key_of(tau(i, p)), p);
                         });
    return kept;
  }

  /// This step's elected signs [P] (+1 or -1), in a new array. Valid after prepare, for the standard variant.
  Kokkos::View<std::int8_t*, typename ExecSpace::memory_space> elected_signs(const ExecSpace& space,
                                                                             const Workspace<ExecSpace>& workspace) {
    require_standard("camex::Ties::elected_signs");
    const auto tau = this->prepared_deltas(space, workspace);
    const auto st = this->mask_state(workspace);
    const std::size_t params = tau.extent(1);
    const auto election = detail::ties_election(st.trim, st.experts, this->mask().options);
    Kokkos::View<std::int8_t*, typename ExecSpace::memory_space> signs("camex::Ties::elected_signs", params);
    const Scalar* x = tau.data();
    const auto stride = row_stride(tau);
    detail::for_each_tile(space, "camex::Ties::elected_signs", params, detail::TiesElection::chunk,
                          KOKKOS_LAMBDA(std::size_t p0, int len) {
                            double sign[detail::TiesElection::chunk];
                            election.elect(p0, len, x + p0, stride, sign);
                            for (int q = 0; q < len; ++q) signs(p0 + q) = static_cast<std::int8_t>(sign[q]);
                          });
    return signs;
  }

 private:
  void require_standard(const char* fn) const {
    if (this->mask().variant != TiesVariant::standard)
      throw argument_error(fn, "this", "the standard variant (sign agreement has no trim or election)",
                           "TiesVariant::sign_agreement");
  }
};

/// TIES-CA: merged_b = base + alpha sum_i s[b, i] M_i(f_i .* tau_i) with the standard mask, or
/// base + alpha sum_i s[b, i] m_i .* M_i(tau_i) with the CAMEx code's sign agreement (TiesVariant::sign_agreement).
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class TiesCA : public ComposedPolicy<Scalar, ExecSpace, TiesMask, CurvatureTransform<Scalar, ExecSpace>> {
 public:
  explicit TiesCA(const MergeProblem& problem, TiesMask mask = {}, const CurvatureOptions& curvature = {},
                  const MergeOptions& options = {})
      : ComposedPolicy<Scalar, ExecSpace, TiesMask, CurvatureTransform<Scalar, ExecSpace>>(
            "camex::TiesCA", problem, options, std::move(mask), CurvatureTransform<Scalar, ExecSpace>(problem, curvature)) {}
};

}  // namespace camex
