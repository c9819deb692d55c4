#pragma once
// The TIES mask (docs/algorithms.md §4.3), in two variants:
//  * standard: TIES as mergekit defines it (trim to `density`, weighted sign election by sum or count, disjoint
//    mean, lambda), applied to the raw deltas before any transform: TIES-CA is then T(f .* tau).
//  * sign_agreement: what the CAMEx code calls "ties": m_i = [sign(tau_i) == sign(sum_j tau_j)] from the raw
//    deltas (both 0 counts as agreeing), no trim, no disjoint mean, applied to the transformed deltas m .* T(tau).
// Both factors are piecewise constant in tau, so their adjoint is the factor itself.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/kernels/top_k.hpp"
#include "camex/platform/vectorize.hpp"
#include "camex/merge/axis/mask.hpp"
#include "camex/merge/ties_mask.hpp"

namespace camex {

/// Which TIES: the paper's (mergekit's) or the CAMEx code's sign agreement.
enum class TiesVariant {
  standard,        ///< trim + weighted sign election + disjoint mean + lambda, on the raw deltas
  sign_agreement,  ///< [sign(tau_i) == sign(sum_j tau_j)] from the raw deltas, applied to the transformed deltas
};

/// The CAMEx code's factor at any run of parameters: [sign(tau_i) == sign(sum_j tau_j)], the sum in double.
struct SignAgreement {
  static constexpr int chunk = 128;
  int experts;

  template <bool Multiply, class T>
  KOKKOS_INLINE_FUNCTION void apply(std::size_t, int len, const T* tau, std::ptrdiff_t tau_stride, T* out,
                                    std::ptrdiff_t out_stride) const {
    const auto sign = [](double x) { return (x > 0) - (x < 0); };
    for (int c0 = 0; c0 < len; c0 += chunk) {
      const int n = len - c0 < chunk ? len - c0 : chunk;
      double sum[chunk];
      for (int q = 0; q < n; ++q) sum[q] = 0;
      for (int i = 0; i < experts; ++i) {
        CAMEX_IVDEP
        for (int q = 0; q < n; ++q) sum[q] += static_cast<double>(tau[i * tau_stride + c0 + q]);
      }
      for (int i = 0; i < experts; ++i) {
        CAMEX_IVDEP
        for (int q = 0; q < n; ++q) {
          const T x = tau[i * tau_stride + c0 + q];
          const T f = T(sign(static_cast<double>(x)) == sign(sum[q]));
          out[i * out_stride + c0 + q] = Multiply ? f * x : f;
        }
      }
    }
  }
};

/// The TIES factor of either variant.
struct TiesFactor {
  TiesVariant variant;
  detail::TiesElection election;
  SignAgreement agreement;

  template <bool Multiply, class T>
  KOKKOS_INLINE_FUNCTION void apply(std::size_t p0, int len, const T* tau, std::ptrdiff_t tau_stride, T* out,
                                    std::ptrdiff_t out_stride) const {
    if (variant == TiesVariant::standard)
      election.template apply<Multiply>(p0, len, tau, tau_stride, out, out_stride);
    else
      agreement.template apply<Multiply>(p0, len, tau, tau_stride, out, out_stride);
  }
};

/// The TIES mask. The routing scores weight the merged sum; `election_weights` weight the sign election and the
/// disjoint mean's divisor (mergekit uses one weight per model for both: camex::mergekit::ties sets both from one
/// list). `options`, `election_weights` and `densities` belong to the standard variant; sign agreement rejects
/// them.
struct TiesMask {
  TiesVariant variant = TiesVariant::standard;
  TiesOptions options{};                 ///< density 1 (no trim), sum election, normalize, lambda 1: mergekit's defaults
  std::vector<double> election_weights{};  ///< one per expert; empty: all 1
  std::vector<double> densities{};         ///< one per expert (mergekit's per-model density); empty: options.density

  template <class ExecSpace>
  struct State {
    detail::TiesMaskState<ExecSpace> trim;  // empty for sign agreement
    std::size_t experts, params;
  };

  /// Throws argument_error for settings that cannot be met or contradict each other, naming the field.
  void check(const char* function, const MergeProblem& problem) const {
    const std::size_t n = problem.experts, params = problem.shape.params();
    if (variant == TiesVariant::sign_agreement) {
      const TiesOptions defaults{};
      if (options.density != defaults.density || options.election != defaults.election ||
          options.normalize != defaults.normalize || options.lambda != defaults.lambda)
        throw argument_error(function, "mask.options", "the defaults with TiesVariant::sign_agreement (it has no trim, "
                             "election rule, disjoint mean or lambda)", "options of the standard variant");
      if (!election_weights.empty() || !densities.empty())
        throw argument_error(function, election_weights.empty() ? "mask.densities" : "mask.election_weights",
                             "none with TiesVariant::sign_agreement (it has no weights or trim)",
                             concat(election_weights.empty() ? densities.size() : election_weights.size(), " values"));
      return;
    }
    detail::check_ties_experts(function, "problem.experts", n);
    if (!election_weights.empty())
      detail::check_ties_options(function, election_weights, options, n, params);
    else if (!std::isfinite(options.lambda))
      throw argument_error(function, "options.lambda", "a finite scale", concat(options.lambda));
    if (densities.empty()) {
      top_k_count(function, options.density, params);
      return;
    }
    if (options.density != 1)
      throw argument_error(function, "mask.densities",
                           "either per-expert densities or options.density, not both",
                           concat(densities.size(), " densities and options.density = ", options.density));
    if (densities.size() != n)
      throw argument_error(function, "mask.densities", concat("one density per expert (", n, ')'),
                           concat(densities.size(), " densities"));
    for (const double d : densities) top_k_count(function, d, params);
  }

  bool factor_active(const StepContext&) const { return true; }
  bool score_factor_active(const StepContext&) const { return false; }
  bool needs_deltas(const StepContext&) const { return variant == TiesVariant::standard; }
  MaskPlacement placement() const {
    return variant == TiesVariant::standard ? MaskPlacement::on_delta : MaskPlacement::on_transformed;
  }

  template <class T, class Carver>
  State<typename Carver::execution_space> layout(Carver& carver, const MergeProblem& problem) const {
    using Space = typename Carver::execution_space;
    const std::size_t n = problem.experts, params = problem.shape.params();
    return {variant == TiesVariant::standard ? detail::TiesMaskState<Space>::template carve<T>(carver, n, params)
                                             : detail::TiesMaskState<Space>{},
            n, params};
  }

  /// The trim and the weights of the step (the options were checked when the policy was built).
  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace& space, const StepContext&, const Tau& tau, const State<ExecSpace>& state) const {
    if (variant != TiesVariant::standard) return;
    const auto kept_count = [&](std::size_t i) {
      return top_k_count("camex::TiesMask::prepare", densities.empty() ? options.density : densities[i], state.params);
    };
    detail::ties_trim(space, tau, std::span<const double>(election_weights), kept_count, state.trim);
  }

  template <class ExecSpace>
  TiesFactor element_factor(const StepContext&, const State<ExecSpace>& state) const {
    const int n = static_cast<int>(state.experts);
    return {variant,
            variant == TiesVariant::standard ? detail::ties_election(state.trim, state.experts, options)
                                             : detail::TiesElection{},
            SignAgreement{n}};
  }

  template <class ExecSpace, class Tau, class Factor, class In, class Out>
  void adjoint(const ExecSpace& space, const StepContext&, const Tau&, const Factor& factor, const In& d_masked,
               const Out& d_tau, const State<ExecSpace>&) const {
    detail::multiply_elementwise(space, factor, d_masked, d_tau);
  }
  UnitScoreFactor score_factor(const StepContext&) const { return {}; }
};

}  // namespace camex
