#pragma once
// The TIES mask (spec §4.3), in two variants:
//  * standard: TIES as mergekit defines it (trim to `density`, weighted sign election by sum or count, disjoint
//    mean, lambda), applied to the raw deltas before any transform: TIES-CA is then T(f .* tau).
//  * sign_agreement: what the CAMEx code calls "ties": m_i = [sign(tau_i) == sign(sum_j tau_j)] from the raw
//    deltas (both 0 counts as agreeing), no trim, no disjoint mean, applied to the transformed deltas m .* T(tau).
// Both factors are piecewise constant in tau, so their adjoint is the factor itself.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/top_k.hpp"
#include "camex/merge/axis/mask.hpp"
#include "camex/merge/ties_mask.hpp"

namespace camex {

/// Which TIES: the paper's (mergekit's) or the CAMEx code's sign agreement.
enum class TiesVariant {
  standard,        ///< trim + weighted sign election + disjoint mean + lambda, on the raw deltas
  sign_agreement,  ///< [sign(tau_i) == sign(sum_j tau_j)] from the raw deltas, applied to the transformed deltas
};

/// The TIES mask. `weights` are mergekit's per-model weights for the election and the disjoint mean (empty: all
/// 1); the routing scores still weight the merge itself. `options` and `weights` apply to the standard variant.
struct TiesMask {
  TiesVariant variant = TiesVariant::standard;
  TiesOptions options{.density = 0.2};
  std::vector<double> weights{};

  bool factor_active(const StepContext&) const { return true; }
  bool score_factor_active(const StepContext&) const { return false; }
  MaskPlacement placement() const {
    return variant == TiesVariant::standard ? MaskPlacement::on_delta : MaskPlacement::on_transformed;
  }

  template <class T, class Carver>
  void layout(Carver& carver, const MergeProblem& problem) const {
    using Space = typename Carver::execution_space;
    if (variant == TiesVariant::standard)
      carver.template take<unsigned char>(ties_mask_workspace_bytes<T, Space>(problem.experts, problem.shape.params()));
  }

  template <class ExecSpace, class Tau, class Factor, class Carver>
  void compute_factor(const ExecSpace& space, const StepContext&, const Tau& tau, const Factor& factor,
                      Carver& carver) const {
    using T = typename Factor::value_type;
    const std::size_t experts = tau.extent(0), params = tau.extent(1);
    if (variant == TiesVariant::sign_agreement) {
      sign_agreement(space, tau, factor);
      return;
    }
    const auto scratch = carver.template take<unsigned char>(ties_mask_workspace_bytes<T, ExecSpace>(experts, params));
    const std::vector<double> w = weights.empty() ? std::vector<double>(experts, 1.0) : weights;
    ties_mask(space, tau, std::span<const double>(w), options, factor, Workspace<ExecSpace>(scratch.data(), scratch.extent(0)));
  }

  template <class ExecSpace, class Tau, class Factor, class In, class Out, class Carver>
  void adjoint(const ExecSpace& space, const Tau&, const Factor& factor, const In& d_masked, const Out& d_tau,
               Carver&) const {
    detail::multiply_elementwise(space, factor, d_masked, d_tau);
  }
  UnitScoreFactor score_factor(const StepContext&) const { return {}; }

  // Kernel launchers below are public because nvcc does not allow extended (device) lambdas in private member
  // functions; they are not part of the policy's interface.
  template <class ExecSpace, class Tau, class Factor>
  static void sign_agreement(const ExecSpace& space, const Tau& tau, const Factor& factor) {
    using T = typename Factor::value_type;
    const int experts = static_cast<int>(tau.extent(0));
    Kokkos::parallel_for("camex::TiesMask[sign_agreement]", Kokkos::RangePolicy<ExecSpace>(space, 0, tau.extent(1)),
                         KOKKOS_LAMBDA(std::size_t p) {
                           const auto sign = [](double x) { return (x > 0) - (x < 0); };
                           double sum = 0;
                           for (int i = 0; i < experts; ++i) sum += static_cast<double>(tau(i, p));
                           const int elected = sign(sum);
                           for (int i = 0; i < experts; ++i) factor(i, p) = T(sign(static_cast<double>(tau(i, p))) == elected);
                         });
  }
};

}  // namespace camex
