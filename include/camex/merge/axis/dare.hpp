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

/// The element-level DARE factor at any run of parameters: keep ? scale_i : 0 with keep drawn at (tensor, i, p),
/// scale_i = 1 / (1 - drop) or the L1 ratio c_i.
struct DareDraws {
  static constexpr int chunk = 256;
  CounterRng rng;
  std::uint32_t tensor;
  float drop;
  int experts;
  double inverse_keep;
  const double* l1_ratio;  // [experts] c_i, or null for 1 / (1 - drop)

  template <bool Multiply, class T>
  KOKKOS_INLINE_FUNCTION void apply(std::size_t p0, int len, const T* tau, std::ptrdiff_t tau_stride, T* out,
                                    std::ptrdiff_t out_stride) const {
    std::uint32_t bits[chunk];
    for (int i = 0; i < experts; ++i) {
      const T scale = static_cast<T>(l1_ratio ? l1_ratio[i] : inverse_keep);
      for (int c0 = 0; c0 < len; c0 += chunk) {
        const int n = len - c0 < chunk ? len - c0 : chunk;
        rng.fill_bits(tensor, static_cast<std::uint32_t>(i), p0 + c0, n, bits);
        const T* x = tau + i * tau_stride + c0;
        T* y = out + i * out_stride + c0;
        CAMEX_IVDEP
        for (int q = 0; q < n; ++q) {
          const T f = CounterRng::to_unit_float(bits[q]) < drop ? T(0) : scale;
          y[q] = Multiply ? f * x[q] : f;
        }
      }
    }
  }
};

struct DareMask {
  double drop = 0.1;
  DareGranularity granularity = DareGranularity::element;
  DareRescale rescale = DareRescale::inverse_keep;
  bool in_eval = false;

  template <class ExecSpace>
  struct State {
    typename detail::WorkspaceCarver<ExecSpace>::template Array<double> norms;    // ||tau_i||_1, S_i, c_i
    typename detail::WorkspaceCarver<ExecSpace>::template Array<double> partial;  // row-sum scratch
    std::size_t experts;
  };

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
  bool needs_deltas(const StepContext& step) const { return factor_active(step) && rescale == DareRescale::l1_norm; }
  MaskPlacement placement() const { return MaskPlacement::on_delta; }

  template <class T, class Carver>
  State<typename Carver::execution_space> layout(Carver& carver, const MergeProblem& problem) const {
    const bool l1 = rescale == DareRescale::l1_norm;
    const std::size_t n = problem.experts;
    auto norms = carver.template take<double>(l1 ? n * 3 : 0);
    auto partial = carver.template take<double>(l1 ? detail::row_sums_workspace_elements(n, problem.shape.params()) : 0);
    return {norms, partial, n};
  }

  /// The L1 rescale's norms; inverse_keep needs nothing beyond the draws.
  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace& space, const StepContext& step, const Tau& tau, const State<ExecSpace>& state) const {
    if (rescale != DareRescale::l1_norm) return;
    const auto draws = element_factor(step, State<ExecSpace>{});
    const auto keep = [=] KOKKOS_FUNCTION(std::size_t i, std::size_t p) {
      return !(draws.rng.uniform({draws.tensor, static_cast<std::uint32_t>(i), p}) < draws.drop);
    };
    l1_norms(space, tau, keep, state.norms, state.partial);
  }

  template <class ExecSpace>
  DareDraws element_factor(const StepContext& step, const State<ExecSpace>& state) const {
    return {CounterRng(step.seed, step.step), step.tensor, static_cast<float>(drop), static_cast<int>(state.experts),
            1.0 / (1.0 - drop), state.norms.extent(0) != 0 ? state.norms.data() + 2 * state.experts : nullptr};
  }

  /// f .* d_masked, plus for the L1 rescale the term through c_i = ||tau_i||_1 / S_i, S_i = ||keep .* tau_i||_1:
  ///   d tau_p += g_i sign(tau_p) (1 - c_i keep_p) / S_i,  g_i = sum_q keep_q tau_q d_masked_q
  /// (c_i is taken as 1, with no gradient, where S_i = 0).
  template <class ExecSpace, class Tau, class Factor, class In, class Out>
  void adjoint(const ExecSpace& space, const Tau& tau, const Factor& factor, const In& d_masked, const Out& d_tau,
               const State<ExecSpace>& state) const {
    detail::multiply_elementwise(space, factor, d_masked, d_tau);
    if (rescale != DareRescale::l1_norm) return;
    const std::size_t experts = tau.extent(0), params = tau.extent(1);
    const auto norms = state.norms;
    const auto partial = state.partial;
    // keep is where the factor is non-zero: the L1 factor of a kept entry is c_i > 0 unless ||tau_i||_1 = 0, and
    // then every term below vanishes anyway. norms still holds this step's ||tau_i||_1, S_i and c_i; its first
    // n entries are reused for g_i.
    const auto keep = [=] KOKKOS_FUNCTION(std::size_t i, std::size_t p) { return factor(i, p) != 0; };
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
