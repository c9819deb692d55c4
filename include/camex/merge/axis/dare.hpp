#pragma once
// The DARE mask (spec §4.4): drop part of each delta at random and rescale the rest.
//  * element granularity (DARE, Yu et al. 2023; mergekit): entry p of expert i survives with probability 1 - drop,
//    drawn at site (tensor, expert i, element p) of the step's CounterRng, so every backend draws the same mask.
//    Survivors are scaled by 1 / (1 - drop) (the paper), or (DareRescale::l1_norm, current mergekit) by
//    ||tau_i||_1 / ||keep .* tau_i||_1 so each expert keeps its L1 norm exactly.
//  * expert granularity (the CAMEx code's Drop2d): routing group b's whole contribution of expert i is dropped
//    with probability `drop` (site (tensor, expert i, element b)) and survivors are scaled by 1 / (1 - drop).
// By default the mask applies in training only (the CAMEx code; a deterministic model at evaluation); `in_eval`
// applies it at evaluation too, which is what a one-shot mergekit merge does.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstddef>

#include "camex/core/error.hpp"
#include "camex/core/random.hpp"
#include "camex/detail/row_sums.hpp"
#include "camex/merge/axis/mask.hpp"

namespace camex {

enum class DareGranularity { element, expert };
enum class DareRescale { inverse_keep, l1_norm };

/// kappa[b, i] of expert-level DARE: 0 for a dropped (group, expert) pair, 1 / (1 - drop) for a kept one.
struct ExpertDropFactor {
  CounterRng rng;
  std::uint32_t tensor;
  float drop;
  double scale;
  KOKKOS_INLINE_FUNCTION double operator()(std::size_t b, std::size_t i) const {
    return rng.uniform({tensor, static_cast<std::uint32_t>(i), b}) < drop ? 0.0 : scale;
  }
};

struct DareMask {
  double drop = 0.1;
  DareGranularity granularity = DareGranularity::element;
  DareRescale rescale = DareRescale::inverse_keep;
  bool in_eval = false;

  /// Throws argument_error for a drop probability outside [0, 1) or an L1 rescale of expert-level dropout.
  void check(const char* function) const {
    if (!(drop >= 0 && drop < 1))
      throw argument_error(function, "dare.drop", "a drop probability in [0, 1)", detail::concat(drop));
    if (granularity == DareGranularity::expert && rescale == DareRescale::l1_norm)
      throw argument_error(function, "dare.rescale", "inverse_keep with expert granularity (Drop2d has no per-entry norm)",
                           "l1_norm");
  }

  bool applies(const StepContext& step) const { return drop > 0 && (step.training || in_eval); }
  bool factor_active(const StepContext& step) const { return applies(step) && granularity == DareGranularity::element; }
  bool score_factor_active(const StepContext& step) const {
    return applies(step) && granularity == DareGranularity::expert;
  }
  MaskPlacement placement() const { return MaskPlacement::on_delta; }

  template <class T, class Carver>
  void layout(Carver& carver, const MergeProblem& problem) const {
    carver.template take<double>(problem.experts * 3);
    carver.template take<double>(detail::row_sums_workspace_elements(problem.experts, problem.shape.params()));
  }

  template <class ExecSpace, class Tau, class Factor, class Carver>
  void compute_factor(const ExecSpace& space, const StepContext& step, const Tau& tau, const Factor& factor,
                      Carver& carver) const {
    using T = typename Factor::value_type;
    const std::size_t experts = tau.extent(0), params = tau.extent(1);
    const auto norms = carver.template take<double>(experts * 3);  // ||tau_i||_1, ||keep .* tau_i||_1, c_i
    const auto partial = carver.template take<double>(detail::row_sums_workspace_elements(experts, params));
    const CounterRng rng(step.seed, step.step);
    const std::uint32_t t = step.tensor;
    const float p_drop = static_cast<float>(drop);
    const auto keep = [=] KOKKOS_FUNCTION(std::size_t i, std::size_t p) {
      return !(rng.uniform({t, static_cast<std::uint32_t>(i), p}) < p_drop);
    };
    if (rescale == DareRescale::inverse_keep) {
      const T scale = static_cast<T>(1.0 / (1.0 - drop));
      Kokkos::parallel_for("camex::DareMask[inverse_keep]", Kokkos::RangePolicy<ExecSpace>(space, 0, experts * params),
                           KOKKOS_LAMBDA(std::size_t k) {
                             const std::size_t i = k / params, p = k % params;
                             factor(i, p) = keep(i, p) ? scale : T(0);
                           });
      return;
    }
    l1_norms(space, tau, keep, norms, partial);
    Kokkos::parallel_for("camex::DareMask[l1_norm]", Kokkos::RangePolicy<ExecSpace>(space, 0, experts * params),
                         KOKKOS_LAMBDA(std::size_t k) {
                           const std::size_t i = k / params, p = k % params;
                           factor(i, p) = keep(i, p) ? static_cast<T>(norms(2 * experts + i)) : T(0);
                         });
  }

  /// f .* d_masked, plus for the L1 rescale the term through c_i = ||tau_i||_1 / S_i, S_i = ||keep .* tau_i||_1:
  ///   d tau_p += g_i sign(tau_p) (1 - c_i keep_p) / S_i,  g_i = sum_q keep_q tau_q d_masked_q
  /// (c_i is taken as 1, with no gradient, where S_i = 0).
  template <class ExecSpace, class Tau, class Factor, class In, class Out, class Carver>
  void adjoint(const ExecSpace& space, const Tau& tau, const Factor& factor, const In& d_masked, const Out& d_tau,
               Carver& carver) const {
    detail::multiply_elementwise(space, factor, d_masked, d_tau);
    if (rescale != DareRescale::l1_norm) return;
    const std::size_t experts = tau.extent(0), params = tau.extent(1);
    const auto norms = carver.template take<double>(experts * 3);
    const auto partial = carver.template take<double>(detail::row_sums_workspace_elements(experts, params));
    // keep is where the factor is non-zero: the L1 factor of a kept entry is c_i > 0 unless ||tau_i||_1 = 0, and
    // then every term below vanishes anyway.
    const auto keep = [=] KOKKOS_FUNCTION(std::size_t i, std::size_t p) { return factor(i, p) != 0; };
    l1_norms(space, tau, keep, norms, partial);
    const auto g = Kokkos::subview(norms, std::pair<std::size_t, std::size_t>(0, experts));
    detail::row_sums(
        space, experts, params,
        KOKKOS_LAMBDA(std::size_t i, std::size_t p) {
          return keep(i, p) ? static_cast<double>(tau(i, p)) * static_cast<double>(d_masked(i, p)) : 0.0;
        },
        partial, g);
    Kokkos::parallel_for("camex::DareMask[l1_norm adjoint]", Kokkos::RangePolicy<ExecSpace>(space, 0, experts * params),
                         KOKKOS_LAMBDA(std::size_t k) {
                           const std::size_t i = k / params, p = k % params;
                           const double s = norms(experts + i);
                           if (s == 0) return;
                           const double x = static_cast<double>(tau(i, p));
                           const double sign = (x > 0) - (x < 0);
                           d_tau(i, p) += static_cast<typename Out::value_type>(
                               g(i) * sign * (1.0 - norms(2 * experts + i) * (keep(i, p) ? 1.0 : 0.0)) / s);
                         });
  }

  ExpertDropFactor score_factor(const StepContext& step) const {
    return {CounterRng(step.seed, step.step), step.tensor, static_cast<float>(drop), 1.0 / (1.0 - drop)};
  }

  // Kernel launchers below are public because nvcc does not allow extended (device) lambdas in private member
  // functions; they are not part of the policy's interface.
  template <class T>
  KOKKOS_INLINE_FUNCTION static double magnitude(T x) {
    return x < 0 ? -static_cast<double>(x) : static_cast<double>(x);
  }

  /// norms = [||tau_i||_1, S_i = ||keep .* tau_i||_1, c_i = ||tau_i||_1 / S_i (1 where S_i = 0)].
  template <class ExecSpace, class Tau, class Keep, class Norms, class Partial>
  static void l1_norms(const ExecSpace& space, const Tau& tau, const Keep& keep, const Norms& norms, const Partial& partial) {
    const std::size_t experts = tau.extent(0), params = tau.extent(1);
    using Range = std::pair<std::size_t, std::size_t>;
    detail::row_sums(
        space, experts, params,
        KOKKOS_LAMBDA(std::size_t i, std::size_t p) { return magnitude(tau(i, p)); }, partial,
        Kokkos::subview(norms, Range(0, experts)));
    detail::row_sums(
        space, experts, params,
        KOKKOS_LAMBDA(std::size_t i, std::size_t p) {
          return keep(i, p) ? magnitude(tau(i, p)) : 0.0;
        },
        partial, Kokkos::subview(norms, Range(experts, 2 * experts)));
    Kokkos::parallel_for("camex::DareMask[l1 ratio]", Kokkos::RangePolicy<ExecSpace>(space, 0, experts), KOKKOS_LAMBDA(std::size_t i) {
      const double s = norms(experts + i);
      norms(2 * experts + i) = s == 0 ? 1.0 : norms(i) / s;
    });
  }
};

}  // namespace camex
