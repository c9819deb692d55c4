#pragma once
// The TIES mask axis, as mergekit defines TIES (Yadav et al. 2023): trim each expert's delta to its `density`
// fraction of largest magnitudes, elect a sign per parameter from the weighted deltas, keep the entries that agree
// with it, and divide by the weight of the agreeing experts (the disjoint mean), times lambda.
//
// camex expresses any mask as an elementwise factor f[i, p], computed once per step from the deltas alone: the
// masked delta of expert i is f[i] .* tau[i], and a routing group b merges base + alpha * sum_i s[b, i] f[i] .* tau[i].
// The router scores take the place of mergekit's weights in the numerator; so when the scores equal `weights`
// (and alpha = 1) the merge is exactly mergekit's TIES. The factor is piecewise constant in tau, so the backward
// of the masked delta is the same factor applied to the incoming gradient.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "camex/core/error.hpp"
#include "camex/core/transfer.hpp"
#include "camex/kernels/top_k.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/non_finite.hpp"
#include "camex/kernels/row_combination.hpp"
#include "camex/platform/vectorize.hpp"

namespace camex {

/// How TIES elects the sign of each parameter (mergekit's `consensus_method`).
enum class SignElection {
  sum,    ///< the sign of sum_i w_i delta_i (the TIES paper); a sum of exactly 0 elects +
  count,  ///< the sign of sum_i sign(w_i delta_i), a majority vote; a tie elects +
};

struct TiesOptions {
  double density = 1.0;                      ///< fraction of each expert's entries the trim keeps (1: no trim)
  SignElection election = SignElection::sum;
  bool normalize = true;                     ///< divide by the weight of the agreeing experts (disjoint mean)
  double lambda = 1.0;                       ///< scale of the merged delta
};

namespace detail {

template <class ExecSpace>
struct TiesMaskState {
  template <class U>
  using Array = typename WorkspaceCarver<ExecSpace>::template Array<U>;
  Array<TrimBoundary> boundaries;  // [N]: each expert's trim, tested on its deltas where they are read
  Array<double> weights;     // [N]
  Workspace<ExecSpace> select;

  template <class T>
  static TiesMaskState carve(WorkspaceCarver<ExecSpace>& carver, std::size_t experts, std::size_t params) {
    TiesMaskState st;
    st.boundaries = carver.template take<TrimBoundary>(experts);
    st.weights = carver.template take<double>(experts);
    const auto carved = carver.template take<unsigned char>(top_k_workspace_bytes<T, ExecSpace>(experts, params));
    st.select = Workspace<ExecSpace>(carved.data(), carved.extent(0));
    return st;
  }
};

/// Experts the standard TIES election takes: a thread holds one entry of every expert's trimmed delta at once, in
/// an array of fixed size (TiesElection::trimmed_entries).
inline constexpr std::size_t ties_max_experts = 2048;

/// Throws argument_error when `experts` (the count `argument` gives) is past ties_max_experts.
inline void check_ties_experts(const char* fn, const char* argument, std::size_t experts) {
  if (experts > ties_max_experts)
    throw argument_error(fn, argument, concat("at most ", ties_max_experts, " experts (the standard TIES election)"),
                         concat(experts, " experts"));
}

/// Throws argument_error unless there is one finite weight per expert and a finite lambda; returns the trim's k.
inline std::size_t check_ties_options(const char* fn, std::span<const double> weights, const TiesOptions& options,
                                      std::size_t experts, std::size_t params) {
  if (weights.size() != experts)
    throw argument_error(fn, "weights", concat("one weight per expert (", experts, ')'),
                         concat(weights.size(), " weights"));
  for (std::size_t i = 0; i < experts; ++i)
    if (!std::isfinite(weights[i]))
      throw argument_error(fn, "weights", "finite weights", concat("weights[", i, "] = ", weights[i]));
  if (!std::isfinite(options.lambda))
    throw argument_error(fn, "options.lambda", "a finite scale", concat(options.lambda));
  return top_k_count(fn, options.density, params);
}

/// trim[first, last) keep every entry of their rows of `params`.
template <class ExecSpace>
void keep_all(const ExecSpace& space, TrimBoundary* trim, std::size_t first, std::size_t last, std::size_t params) {
  Kokkos::parallel_for("camex::ties_trim[keep all]", Kokkos::RangePolicy<ExecSpace>(space, first, last),
                       KOKKOS_LAMBDA(std::size_t i) { trim[i] = {0, params}; });
}

/// The trim (expert i keeps its top kept_count(i) entries by magnitude, or all: st.boundaries[i]) and the weights (empty:
/// all 1), on the device; the weights travel as kernel arguments, so a step copies nothing. The deltas are finite:
/// every caller has scanned them (ties_mask, or the composed policy's operand check), so the selections read back
/// nothing.
template <class ExecSpace, class Deltas, class KeptCount>
void ties_trim(const ExecSpace& space, const Deltas& deltas, std::span<const double> weights,
               const KeptCount& kept_count, const TiesMaskState<ExecSpace>& st) {
  const std::size_t experts = deltas.extent(0), params = deltas.extent(1);
  if (weights.empty()) {
    Kokkos::deep_copy(space, st.weights, 1.0);
  } else {
    write_by_argument(space, weights.first(experts), st.weights.data());
  }
  const Kokkos::View<std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space,
                     Kokkos::MemoryTraits<Kokkos::Unmanaged>>
      no_mask;
  TrimBoundary* trim = st.boundaries.data();
  bool one_k = true;
  for (std::size_t i = 1; i < experts; ++i) one_k = one_k && kept_count(i) == kept_count(0);
  if (one_k) {
    if (kept_count(0) < params)
      select_top_k(space, deltas, kept_count(0), no_mask, trim, st.select, nullptr);
    else
      keep_all(space, trim, 0, experts, params);
    return;
  }
  for (std::size_t i = 0; i < experts; ++i) {
    const std::pair<std::size_t, std::size_t> row(i, i + 1);
    if (kept_count(i) < params)
      select_top_k(space, Kokkos::subview(deltas, row, Kokkos::ALL), kept_count(i), no_mask, trim + i, st.select, nullptr);
    else
      keep_all(space, trim, i, i + 1, params);
  }
}

/// The TIES factor at any run of parameters, from the trim and the deltas there: the element factor of TiesMask.
/// Works on runs of at most `chunk` entries at a time, in passes over the experts that vectorise along the run;
/// sums are taken in double in expert order, so any run length gives the same factors.
///
/// The trim is each expert's TrimBoundary, tested on the delta being read: no mask of the trim is written or read.
/// The trim and the agreements enter the sums as factors of 0 or 1 in the deltas' type rather than as selects: a
/// product with 0 or 1 is exact, so the sums are those of the selected terms (a dropped term adds a zero, and a
/// sum that starts at +0 is never -0), and the vector loops stay in the deltas' lanes instead of widening masks to
/// 64-bit ones.
struct TiesElection {
  static constexpr int chunk = 128;
  /// Entries of the trimmed deltas of one run, all experts: a run is `chunk` entries, or fewer with many experts.
  static constexpr int trimmed_entries = static_cast<int>(ties_max_experts);
  const TrimBoundary* trim;  // [n]
  const double* weights;
  int experts;
  bool by_sum, normalize;
  double lambda;

  /// The entries per run for this many experts, at most chunk.
  KOKKOS_INLINE_FUNCTION int run_length() const {
    const int fit = trimmed_entries / (experts > 0 ? experts : 1);
    return fit < 1 ? 1 : fit < chunk ? fit : chunk;
  }

  template <bool Multiply, class T>
  KOKKOS_INLINE_FUNCTION void apply(std::size_t p0, int len, const T* tau, std::ptrdiff_t tau_stride, T* out,
                                    std::ptrdiff_t out_stride) const {
    const int run = run_length();
    for (int c0 = 0; c0 < len; c0 += run) {
      const int n = len - c0 < run ? len - c0 : run;
      T trimmed[trimmed_entries];
      trim_run(p0 + c0, n, tau + c0, tau_stride, trimmed);
      double sign[chunk], agreeing[chunk];
      elect_trimmed(n, trimmed, sign);
      T elected[chunk], factor[chunk];
      for (int q = 0; q < n; ++q) {
        elected[q] = static_cast<T>(sign[q]);
        agreeing[q] = 0;
      }
      each_agreement(n, trimmed, elected, [&](int, int q, double w, T agrees) { agreeing[q] += w * static_cast<double>(agrees); });
      CAMEX_IVDEP
      for (int q = 0; q < n; ++q)
        factor[q] = static_cast<T>(lambda / (normalize && agreeing[q] != 0 ? agreeing[q] : 1.0));
      each_agreement(n, trimmed, elected, [&](int i, int q, double, T agrees) {
        // A mask, not agrees * factor: the factor overflows to inf where the agreeing weight is tiny.
        const T f = value_or_zero(agrees != T(0), factor[q]);
        T* y = out + i * out_stride + c0;
        y[q] = Multiply ? f * tau[i * tau_stride + c0 + q] : f;
      });
    }
  }

  /// The elected sign (+1 or -1) of entries q < n <= chunk of a run starting at parameter p and at tau: a sum
  /// (or vote) of exactly 0 elects +.
  template <class T>
  KOKKOS_INLINE_FUNCTION void elect(std::size_t p, int n, const T* tau, std::ptrdiff_t tau_stride, double* sign) const {
    const int run = run_length();
    for (int c0 = 0; c0 < n; c0 += run) {
      const int m = n - c0 < run ? n - c0 : run;
      T trimmed[trimmed_entries];
      trim_run(p + c0, m, tau + c0, tau_stride, trimmed);
      elect_trimmed(m, trimmed, sign + c0);
    }
  }

  /// trimmed[i * n + q] = tau_i at entry q of a run of n entries from parameter p where expert i's trim keeps it,
  /// else 0: the one test of the trim per entry, against the expert's TrimBoundary (ties kept below tie_end).
  template <class T>
  KOKKOS_FORCEINLINE_FUNCTION void trim_run(std::size_t p, int n, const T* tau, std::ptrdiff_t tau_stride, T* trimmed) const {
    for (int i = 0; i < experts; ++i) {
      const TrimBoundary b = trim[i];
      const auto threshold = static_cast<magnitude_key<T>>(b.threshold);
      const int stop = b.tie_end <= p ? 0 : b.tie_end - p >= static_cast<std::uint64_t>(n) ? n : static_cast<int>(b.tie_end - p);
      const T* x = tau + i * tau_stride;
      T* t = trimmed + i * n;
      CAMEX_IVDEP
      for (int q = 0; q < n; ++q) {
        const magnitude_key<T> key = key_of(x[q]);
        // Bitwise, not short-circuit: a select per lane, so the loop vectorises.
        t[q] = x[q] * static_cast<T>((key > threshold) | ((key == threshold) & (q < stop)));
      }
    }
  }

  /// elect() over trimmed deltas [experts, n].
  template <class T>
  KOKKOS_INLINE_FUNCTION void elect_trimmed(int n, const T* trimmed, double* sign) const {
    for (int q = 0; q < n; ++q) sign[q] = 0;
    if (by_sum)
      each_weighted_delta(n, trimmed, [&](int, int q, double, double d) { sign[q] += d; });
    else
      each_weighted_delta(n, trimmed, [&](int, int q, double, double d) {
        sign[q] += static_cast<double>(d > 0) - static_cast<double>(d < 0);
      });
    CAMEX_IVDEP
    for (int q = 0; q < n; ++q) sign[q] = sign[q] >= 0 ? 1.0 : -1.0;
  }

  /// visit(i, q, w_i, d) for every expert i and entry q < n of trimmed deltas [experts, n]: d = w_i t_i, a zero
  /// where the trim dropped the entry. Expert by expert, each a loop along the run.
  template <class T, class Visit>
  KOKKOS_FORCEINLINE_FUNCTION void each_weighted_delta(int n, const T* trimmed, const Visit& visit) const {
    for (int i = 0; i < experts; ++i) {
      const T* t = trimmed + i * n;
      const double w = weights[i];
      CAMEX_IVDEP
      for (int q = 0; q < n; ++q) visit(i, q, w, w * static_cast<double>(t[q]));
    }
  }

  /// Weights at least this large in magnitude give every nonzero float or double delta a nonzero weighted delta:
  /// |w tau| >= 2^-925 2^-149 = 2^-1074, the smallest double.
  static constexpr double sign_exact_weight = 0x1p-925;

  /// visit(i, q, w_i, agrees) for every expert i and entry q < n of trimmed deltas [experts, n]: agrees is 1 (in T)
  /// where the trim kept the entry and its weighted delta w_i tau_i has the elected sign (`elected`, +-1 in T), i.e.
  /// w_i t_i e > 0 (a dropped entry's t_i = 0 never agrees), else 0. Where |w_i| >= sign_exact_weight that is
  /// sign(w_i) t_i e > 0, decided in T without forming the double product: both factors are +-1, so the product is
  /// exact, and as fast as the T lanes allow; a smaller weight decides on the double product itself.
  template <class T, class Visit>
  KOKKOS_FORCEINLINE_FUNCTION void each_agreement(int n, const T* trimmed, const T* elected, const Visit& visit) const {
    for (int i = 0; i < experts; ++i) {
      const T* t = trimmed + i * n;
      const double w = weights[i];
      if (w >= sign_exact_weight || w <= -sign_exact_weight) {
        const T w_sign = w > 0 ? T(1) : T(-1);
        CAMEX_IVDEP
        for (int q = 0; q < n; ++q) visit(i, q, w, static_cast<T>(t[q] * w_sign * elected[q] > T(0)));
      } else {
        CAMEX_IVDEP
        for (int q = 0; q < n; ++q)
          visit(i, q, w, static_cast<T>(w * static_cast<double>(t[q]) * static_cast<double>(elected[q]) > 0));
      }
    }
  }
};

template <class ExecSpace>
TiesElection ties_election(const TiesMaskState<ExecSpace>& st, std::size_t experts, const TiesOptions& options) {
  return {st.boundaries.data(), st.weights.data(), static_cast<int>(experts), options.election == SignElection::sum,
          options.normalize, options.lambda};
}

}  // namespace detail

namespace detail {

/// ties_mask's workspace: the mask's state, then the cell of the scan for non-finite deltas.
template <class T, class ExecSpace>
auto carve_ties_mask(WorkspaceCarver<ExecSpace>& carver, std::size_t experts, std::size_t params) {
  struct Pieces {
    TiesMaskState<ExecSpace> state;
    typename WorkspaceCarver<ExecSpace>::template Array<std::size_t> scan_cell;
  };
  auto state = TiesMaskState<ExecSpace>::template carve<T>(carver, experts, params);
  return Pieces{state, carver.template take<std::size_t>(1)};
}

}  // namespace detail

/// Bytes of workspace ties_mask needs for `experts` deltas of `params` entries of type Scalar.
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
std::size_t ties_mask_workspace_bytes(std::size_t experts, std::size_t params) {
  WorkspaceCarver<ExecSpace> carver;
  detail::carve_ties_mask<Scalar>(carver, experts, params);
  return carver.bytes();
}

/// factor[i, p] for the deltas tau [N, P] (expert i minus the base): lambda * [entry kept by the trim and its
/// weighted sign agrees with the elected one] / (normalize ? sum of the agreeing experts' weights, or 1 if none
/// : 1). `weights` holds one weight per expert (mergekit's per-model `weight`).
template <class ExecSpace, MatrixOn<ExecSpace> Deltas, MatrixOn<ExecSpace> Factor>
  requires MutableMatrix<Factor> && std::same_as<typename Deltas::non_const_value_type, typename Factor::value_type> &&
           std::floating_point<typename Factor::value_type>
void ties_mask(const ExecSpace& space, const Deltas& deltas, std::span<const double> weights, const TiesOptions& options,
               const Factor& factor, const Workspace<ExecSpace>& workspace) {
  using T = typename Factor::value_type;
  constexpr const char* fn = "camex::ties_mask";
  require_nonempty(fn, "deltas", deltas, "[N, P] stack of expert deltas");
  const std::size_t experts = deltas.extent(0), params = deltas.extent(1);
  require_shape(fn, "factor", factor, experts, params, "[N, P], the shape of deltas");
  require_disjoint(fn, "factor", factor, "deltas", deltas);
  detail::check_ties_experts(fn, "deltas", experts);
  const std::size_t k = detail::check_ties_options(fn, weights, options, experts, params);

  WorkspaceCarver<ExecSpace> carver(fn, workspace);
  const auto [st, scan_cell] = detail::carve_ties_mask<T>(carver, experts, params);
  const auto scan = detail::arm_scan(space, scan_cell.data());
  detail::scan_rows(space, scan, deltas.data(), row_stride(deltas), static_cast<int>(experts), params);
  if (const std::size_t first = detail::first_non_finite(space, scan); first != detail::no_position)
    throw argument_error(fn, "deltas", "finite values",
                         concat("deltas(", first / params, ", ", first % params, ") = ",
                                        static_cast<double>(detail::read_entry(space, deltas, first / params, first % params))));
  detail::ties_trim(space, deltas, weights, [k](std::size_t) { return k; }, st);
  const auto election = detail::ties_election(st, experts, options);
  const T* tau = deltas.data();
  T* f = factor.data();
  const auto tau_stride = row_stride(deltas), f_stride = row_stride(factor);
  detail::for_each_tile(space, "camex::ties_mask", params, detail::TiesElection::chunk,
                        KOKKOS_LAMBDA(std::size_t p0, int len) {
                          election.template apply<false>(p0, len, tau + p0, tau_stride, f + p0, f_stride);
                        });
}

}  // namespace camex
