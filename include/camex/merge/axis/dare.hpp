#pragma once
// The DARE mask (docs/algorithms.md §4.4): drop part of each delta at random and rescale the rest.
//  * element granularity (DARE, Yu et al. 2023; mergekit): entry p of expert i survives with probability 1 - drop,
//    drawn at site (stream, expert i, element p) of the step's CounterRng, so every backend draws the same mask.
//    Survivors are scaled by 1 / (1 - drop) (the paper), by ||tau_i||_1 / ||keep .* tau_i||_1 so each expert
//    keeps its L1 norm (DareRescale::l1_norm, mergekit's `rescale: true`), or not at all (DareRescale::none,
//    mergekit's `rescale: false`). Each expert may have its own drop probability (mergekit's per-model density).
//  * expert granularity (the CAMEx code's Drop2d): routing group b's whole contribution of expert i is dropped
//    with probability `drop` (site (stream, expert i, element b)) and survivors are scaled by 1 / (1 - drop).
// By default the mask applies in training only (the CAMEx code; a deterministic model at evaluation); `in_eval`
// applies it at evaluation too, which is what a one-shot mergekit merge does.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <optional>
#include <span>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/random.hpp"
#include "camex/core/transfer.hpp"
#include "camex/kernels/row_sums.hpp"
#include "camex/merge/axis/mask.hpp"

namespace camex {

enum class DareGranularity { element, expert };
enum class DareRescale {
  inverse_keep,  ///< survivors times 1 / (1 - drop)
  l1_norm,       ///< survivors times ||tau_i||_1 / ||keep .* tau_i||_1, unless either norm is below 1e-7 (mergekit)
  none,          ///< survivors as they are
};

/// Below this L1 norm (of the delta or of its survivors) the L1 rescale leaves a delta as it is, as mergekit does.
inline constexpr double l1_rescale_floor = 1e-7;

/// kappa[b, i] of expert-level DARE: 0 for a dropped (group, expert) pair, 1 / (1 - drop) for a kept one.
struct ExpertDropFactor {
  CounterRng rng;
  std::uint32_t stream;
  float drop;
  double scale;
  KOKKOS_INLINE_FUNCTION double operator()(std::size_t b, std::size_t i) const {
    return rng.uniform({stream, static_cast<std::uint32_t>(i), b}) < drop ? 0.0 : scale;
  }
};

/// The element-level DARE factor at any run of parameters: keep ? scale_i : 0 with keep drawn at (stream, i, p).
/// Expert i's drop probability and scale come from `expert_drop` and `expert_scale` when those are given, else
/// from `drop` and `scale`; the L1 rescale's ratio c_i, when given, replaces the scale.
struct DareDraws {
  static constexpr int chunk = 256;
  CounterRng rng;
  std::uint32_t stream;
  float drop;
  int experts;
  double scale;
  const float* expert_drop;    // [experts], or null
  const double* expert_scale;  // [experts], or null
  const double* l1_ratio;      // [experts] c_i, or null

  KOKKOS_INLINE_FUNCTION float drop_of(int i) const { return expert_drop ? expert_drop[i] : drop; }

  KOKKOS_INLINE_FUNCTION bool kept(std::size_t i, std::size_t p) const {
    return !(rng.uniform({stream, static_cast<std::uint32_t>(i), p}) < drop_of(static_cast<int>(i)));
  }

  /// Runs of a host thread are `chunk` entries, drawn by AVX-512 where compiled in; a device lane holds
  /// lane_entries (for_each_tile's lanes start on multiples of 4), one Philox block per expert, all four words used.
  template <bool Multiply, class T>
  KOKKOS_INLINE_FUNCTION void apply(std::size_t p0, int len, const T* tau, std::ptrdiff_t tau_stride, T* out,
                                    std::ptrdiff_t out_stride) const {
    constexpr int run = detail::device_pass ? detail::lane_entries : chunk;
    std::uint32_t bits[run];
    for (int i = 0; i < experts; ++i) {
      const T s = static_cast<T>(l1_ratio ? l1_ratio[i] : expert_scale ? expert_scale[i] : scale);
      const float d = drop_of(i);
      for (int c0 = 0; c0 < len; c0 += run) {
        const int n = len - c0 < run ? len - c0 : run;
        rng.fill_bits(stream, static_cast<std::uint32_t>(i), p0 + c0, n, bits);
        const T* x = tau + i * tau_stride + c0;
        T* y = out + i * out_stride + c0;
        CAMEX_IVDEP
        for (int q = 0; q < n; ++q) {
          const T f = CounterRng::to_unit_float(bits[q]) < d ? T(0) : s;
          y[q] = Multiply ? f * x[q] : f;
        }
      }
    }
  }
};

namespace detail {

template <class T>
KOKKOS_INLINE_FUNCTION double magnitude(T x) {
  return x < 0 ? -static_cast<double>(x) : static_cast<double>(x);
}

/// DARE's L1 rescale: norms = [||tau_i||_1, S_i = ||keep .* tau_i||_1, c_i = ||tau_i||_1 / S_i, or 1 where either
/// norm is below l1_rescale_floor].
template <class ExecSpace, class Tau, class Keep, class Norms, class Partial>
void dare_l1_norms(const ExecSpace& space, const Tau& tau, const Keep& keep, const Norms& norms, const Partial& partial) {
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
    norms(2 * experts + i) = s < l1_rescale_floor || norms(i) < l1_rescale_floor ? 1.0 : norms(i) / s;
  });
}

}  // namespace detail

struct DareMask {
  static constexpr double default_drop = 0.1;  ///< the CAMEx code's p

  std::optional<double> drop{};    ///< every expert's drop probability, in [0, 1); unset: 0.1, or `drops`
  std::vector<double> drops{};     ///< one drop probability per expert (element granularity); exclusive with `drop`
  DareGranularity granularity = DareGranularity::element;
  DareRescale rescale = DareRescale::inverse_keep;
  bool in_eval = false;

  template <class ExecSpace>
  struct State {
    typename WorkspaceCarver<ExecSpace>::template Array<double> norms;    // ||tau_i||_1, S_i, c_i
    typename WorkspaceCarver<ExecSpace>::template Array<double> partial;  // row-sum scratch
    typename WorkspaceCarver<ExecSpace>::template Array<float> expert_drop;    // with `drops`
    typename WorkspaceCarver<ExecSpace>::template Array<double> expert_scale;  // with `drops`
    std::size_t experts;
  };

  /// The drop probability of expert i.
  double drop_of(std::size_t i) const { return drops.empty() ? drop.value_or(default_drop) : drops[i]; }

  /// Survivors' scale at drop probability p.
  double scale_at(double p) const { return rescale == DareRescale::inverse_keep ? 1.0 / (1.0 - p) : 1.0; }

  /// Throws argument_error for a drop probability outside [0, 1), for `drop` and `drops` both set or `drops` of the
  /// wrong length, and for expert granularity with per-expert drops or the L1 rescale.
  void check(const char* function, const MergeProblem& problem) const {
    const auto probability = [&](const char* name, double p) {
      if (!(p >= 0 && p < 1)) throw argument_error(function, name, "a drop probability in [0, 1)", concat(p));
    };
    if (drop) probability("dare.drop", *drop);
    if (!drops.empty()) {
      if (drop)
        throw argument_error(function, "dare.drops", "either one drop probability (drop) or one per expert (drops), not both",
                             concat(drops.size(), " drops and drop = ", *drop));
      if (drops.size() != problem.experts)
        throw argument_error(function, "dare.drops", concat("one drop probability per expert (", problem.experts, ')'),
                             concat(drops.size(), " drops"));
      for (std::size_t i = 0; i < drops.size(); ++i) probability(concat("dare.drops[", i, "]").c_str(), drops[i]);
      if (granularity == DareGranularity::expert)
        throw argument_error(function, "dare.drops", "one drop probability with expert granularity", "one per expert");
    }
    if (granularity == DareGranularity::expert && rescale == DareRescale::l1_norm)
      throw argument_error(function, "dare.rescale", "inverse_keep or none with expert granularity (Drop2d has no "
                           "per-entry norm)", "l1_norm");
  }

  bool drops_anything() const {
    for (std::size_t i = 0; i < std::max<std::size_t>(drops.size(), 1); ++i)
      if (drop_of(i) > 0) return true;
    return false;
  }
  bool applies(const StepContext& step) const { return (step.training || in_eval) && drops_anything(); }
  bool factor_active(const StepContext& step) const { return applies(step) && granularity == DareGranularity::element; }
  bool score_factor_active(const StepContext& step) const {
    return applies(step) && granularity == DareGranularity::expert;
  }
  bool needs_deltas(const StepContext& step) const { return factor_active(step) && rescale == DareRescale::l1_norm; }
  MaskPlacement placement() const { return MaskPlacement::on_delta; }

  template <class T, class Carver>
  State<typename Carver::execution_space> layout(Carver& carver, const MergeProblem& problem) const {
    const bool l1 = rescale == DareRescale::l1_norm, per_expert = !drops.empty();
    const std::size_t n = problem.experts;
    auto norms = carver.template take<double>(l1 ? n * 3 : 0);
    auto partial = carver.template take<double>(l1 ? detail::row_sums_workspace_elements<typename Carver::execution_space>(n, problem.shape.params()) : 0);
    auto expert_drop = carver.template take<float>(per_expert ? n : 0);
    auto expert_scale = carver.template take<double>(per_expert ? n : 0);
    return {norms, partial, expert_drop, expert_scale, n};
  }

  /// Per-expert drops and scales (only with `drops`, passed as kernel arguments), then the L1 rescale's norms.
  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace& space, const StepContext& step, const Tau& tau, const State<ExecSpace>& state) const {
    if (!drops.empty()) {
      write_by_argument(space, std::span<const double>(drops), state.expert_drop.data());
      write_by_argument(space, std::span<const double>(drops), state.expert_scale.data(),
                        [this](double p) { return scale_at(p); });
    }
    if (rescale != DareRescale::l1_norm) return;
    State<ExecSpace> draws_only = state;
    draws_only.norms = {};
    const auto draws = element_factor(step, draws_only);
    detail::dare_l1_norms(space, tau, [=] KOKKOS_FUNCTION(std::size_t i, std::size_t p) { return draws.kept(i, p); }, state.norms,
             state.partial);
  }

  template <class ExecSpace>
  DareDraws element_factor(const StepContext& step, const State<ExecSpace>& state) const {
    const double p = drop_of(0);
    const bool per_expert = state.expert_drop.extent(0) != 0;
    return {CounterRng(step.seed, step.step),
            step.stream,
            static_cast<float>(p),
            static_cast<int>(state.experts),
            scale_at(p),
            per_expert ? state.expert_drop.data() : nullptr,
            per_expert ? state.expert_scale.data() : nullptr,
            state.norms.extent(0) != 0 ? state.norms.data() + 2 * state.experts : nullptr};
  }

  /// f .* d_masked, plus for the L1 rescale the term through c_i = ||tau_i||_1 / S_i, S_i = ||keep .* tau_i||_1:
  ///   d tau_p += g_i sign(tau_p) (1 - c_i keep_p) / S_i,  g_i = sum_q keep_q tau_q d_masked_q
  /// (no such term where c_i = 1: where the rescale was skipped, and where no non-zero entry was dropped, whose
  /// term vanishes anyway).
  template <class ExecSpace, class Tau, class Factor, class In, class Out>
  void adjoint(const ExecSpace& space, const StepContext&, const Tau& tau, const Factor& factor, const In& d_masked,
               const Out& d_tau, const State<ExecSpace>& state) const {
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
                           if (norms(2 * experts + i) == 1.0) return;
                           const double x = static_cast<double>(tau(i, p));
                           const double sign = (x > 0) - (x < 0);
                           d_tau(i, p) += static_cast<typename Out::value_type>(
                               g(i) * sign * (1.0 - norms(2 * experts + i) * (keep(i, p) ? 1.0 : 0.0)) / s);
                         });
  }

  ExpertDropFactor score_factor(const StepContext& step) const {
    const double p = drop_of(0);
    return {CounterRng(step.seed, step.step), step.stream, static_cast<float>(p), scale_at(p)};
  }
};

}  // namespace camex
