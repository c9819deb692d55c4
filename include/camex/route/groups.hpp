#pragma once
// Routing granularity (docs/algorithms.md §2.3, §2.4): which tokens share one routing decision, and what the router sees for
// it. Tokens are the rows of x [S * L, I]: sequence q, position t at row q * L + t.
//
//  * sequence: one routing group per sequence, routed on the mean of its tokens (the CAMEx T5 layer, SMEAR).
//  * causal_segment: each sequence is cut into L / T segments of T tokens, one routing group per segment; group
//    (q, s) merges with the gates computed from segment s - 1 of the same sequence, so no token's merged weights
//    depend on later tokens (Lory; the CAMEx GPT-2 layer). Segment 0 merges with the gates computed from itself,
//    detached: its merge sends no gradient to the gates, so none to the router's parameters nor to x (docs/algorithms.md §2.3;
//    the CAMEx code detaches the gate values). Its tokens still see a decision that depends on later tokens of
//    segment 0 (the documented leak, docs/algorithms.md §2.3).
//
// Which gates the router computes, and so which its balancing loss sums, is `GateRows` (the two agree for
// sequences): the CAMEx code's one row per segment on its own mean (default), or one row per group on the mean
// that routes it.
//
// An optional padding mask [S, L] (1 = real token) takes padding out of the means (camex's default); the CAMEx
// code averages over padding as well, which `Padding::include` reproduces. A group whose source holds no real
// token (a sequence or segment of padding only) is routed on zeros.
//
// The router's G rows and the G groups: row r is computed from the mean of group router_source(r); group g merges
// with row gate_row(g). Under causal segments:
//
//   GateRows::per_segment  row r = the gates of segment r on its own mean; group s merges with row s - 1 (segment
//                          0 with row 0, detached). The balancing loss sums every segment's own gates, the last
//                          segment's too, and its gradient reaches every segment's tokens, segment 0's included.
//   GateRows::per_group    row g = the gates group g merges with, from the mean of segment g - 1 (segment 0's
//                          own). The balancing loss sums those: segment 0's mean is counted twice and the last
//                          segment's never; row 0's routing mean is detached, so no gradient of it reaches x.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>

#include "camex/core/error.hpp"
#include "camex/core/views.hpp"

namespace camex {

enum class Granularity {
  sequence,        ///< one group per sequence, routed on its own mean
  causal_segment,  ///< one group per segment of T tokens, routed on the previous segment's mean
};

/// Which gates the router computes, and so which gates its balancing loss sums (causal segments; see above).
enum class GateRows {
  per_segment,  ///< one row per segment on its own mean, every segment's own gates balanced: the CAMEx code
  per_group,    ///< one row per group on the mean that routes it, the merged gates balanced
};

/// Whether padded positions count in a routing mean.
enum class Padding {
  exclude,  ///< mean over the real tokens only (camex's default)
  include,  ///< mean over all L (or T) positions, padding included: the CAMEx code's behaviour
};

struct RoutingLayout {
  std::size_t sequences = 0;  ///< S
  std::size_t length = 0;     ///< L, tokens per sequence
  Granularity granularity = Granularity::sequence;
  std::size_t segment = 256;  ///< T, tokens per segment (causal_segment only; the CAMEx code's value)
  Padding padding = Padding::exclude;
  GateRows gate_rows = GateRows::per_segment;

  /// Segments per sequence: L / T, or 1 for sequence granularity.
  KOKKOS_INLINE_FUNCTION constexpr std::size_t segments() const { return granularity == Granularity::sequence ? 1 : length / segment; }
  /// Tokens per routing group.
  KOKKOS_INLINE_FUNCTION constexpr std::size_t group_length() const { return granularity == Granularity::sequence ? length : segment; }
  /// Routing groups: S * segments().
  KOKKOS_INLINE_FUNCTION constexpr std::size_t groups() const { return sequences * segments(); }
  constexpr std::size_t tokens() const { return sequences * length; }

  /// The group whose mean decides group g: itself for sequences and segment 0, the previous segment otherwise.
  KOKKOS_INLINE_FUNCTION std::size_t source(std::size_t g) const {
    const std::size_t per = segments();
    return g % per == 0 ? g : g - 1;
  }
  /// The group whose mean is router row r's input.
  KOKKOS_INLINE_FUNCTION std::size_t router_source(std::size_t r) const {
    return gate_rows == GateRows::per_segment ? r : source(r);
  }
  /// The router row whose gates merge group g.
  KOKKOS_INLINE_FUNCTION std::size_t gate_row(std::size_t g) const {
    return gate_rows == GateRows::per_segment ? source(g) : g;
  }
  /// Whether group g's merge sends no gradient to its gates: segment 0 under causal segments, also where it is
  /// the only segment (T = L).
  KOKKOS_INLINE_FUNCTION bool merge_detached(std::size_t g) const {
    return granularity == Granularity::causal_segment && g % segments() == 0;
  }
  /// The router row whose input gradient the tokens of group g receive: the row computed from g's mean, none
  /// (groups()) where that mean is detached (per_group: segment 0's own) or routes nothing (per_group: the last).
  KOKKOS_INLINE_FUNCTION std::size_t gradient_receiver(std::size_t g) const {
    if (granularity == Granularity::sequence || gate_rows == GateRows::per_segment) return g;
    const std::size_t per = segments();
    return g % per + 1 < per ? g + 1 : groups();
  }
};

namespace detail {

/// Throws unless `layout` is usable: S, L >= 1, and for causal segments 1 <= T dividing L.
inline void check_layout(const char* fn, const RoutingLayout& layout) {
  if (layout.sequences == 0) throw argument_error(fn, "layout.sequences", "at least one sequence", "0");
  if (layout.length == 0) throw argument_error(fn, "layout.length", "at least one token per sequence", "0");
  if (layout.granularity == Granularity::causal_segment &&
      (layout.segment == 0 || layout.length % layout.segment != 0))
    throw argument_error(fn, "layout.segment",
                         concat("a segment length dividing the sequence length L = ", layout.length),
                         concat(layout.segment));
}

/// Throws unless `mask` is empty (no padding) or [S, L].
template <class Mask>
void check_padding_mask(const char* fn, const Mask& mask, const RoutingLayout& layout) {
  if (mask.extent(0) == 0 && mask.extent(1) == 0) return;
  require_shape(fn, "padding", mask, layout.sequences, layout.length, "[S, L] (layout.sequences, layout.length), or empty");
}

/// Entries of the input rows one work item covers on host spaces (a vectorised run); one on devices, where
/// neighbouring lanes take neighbouring entries.
template <class ExecSpace>
constexpr std::size_t routing_tile() {
  return static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible) ? 256 : 1;
}

}  // namespace detail

/// routed[r, :] = the mean of x over the tokens of group layout.router_source(r) (its real tokens, or all of them
/// with Padding::include): the input of every router row. x [S * L, I]; padding [S, L] of 0/1 or empty;
/// routed [G, I] with G = layout.groups().
template <class ExecSpace, MatrixOn<ExecSpace> X, MatrixOn<ExecSpace> Mask, MatrixOn<ExecSpace> Routed>
  requires MutableMatrix<Routed> && std::same_as<typename Mask::non_const_value_type, std::uint8_t>
void routing_inputs(const ExecSpace& space, const RoutingLayout& layout, const X& x, const Mask& padding,
                    const Routed& routed) {
  using T = typename Routed::value_type;
  constexpr const char* fn = "camex::routing_inputs";
  detail::check_layout(fn, layout);
  require_nonempty(fn, "x", x, "[S * L, I] matrix of token rows");
  require_shape(fn, "x", x, layout.tokens(), x.extent(1), "[S * L, I] (layout.sequences * layout.length)");
  detail::check_padding_mask(fn, padding, layout);
  require_shape(fn, "routed", routed, layout.groups(), x.extent(1), "[G, I] (layout.groups(), x.extent(1))");
  require_disjoint(fn, "routed", routed, "x", x);

  const std::size_t width = x.extent(1), groups = layout.groups(), per = layout.group_length();
  constexpr std::size_t tile = detail::routing_tile<ExecSpace>();
  const std::size_t tiles = (width + tile - 1) / tile;
  const bool masked = padding.extent(0) != 0 && layout.padding == Padding::exclude;
  const std::uint8_t* real = padding.data();
  const auto x_stride = row_stride(x), out_stride = row_stride(routed);
  const auto* xs = x.data();
  T* out = routed.data();
  Kokkos::parallel_for("camex::routing_inputs", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * tiles),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t g = w / tiles, i0 = w % tiles * tile;
                         const std::size_t len = width - i0 < tile ? width - i0 : tile;
                         const std::size_t first = layout.router_source(g) * per;  // token row; sequences are consecutive
                         double sum[tile] = {};
                         std::size_t count = 0;
                         for (std::size_t t = first; t < first + per; ++t) {
                           const bool counted = !masked || real[t] != 0;  // mask [S, L] is [S * L] row-major
                           count += counted;
                           if (!counted) continue;
                           const auto* row = xs + t * x_stride + i0;
                           for (std::size_t q = 0; q < len; ++q) sum[q] += static_cast<double>(row[q]);
                         }
                         const double scale = count ? 1.0 / static_cast<double>(count) : 0.0;
                         for (std::size_t q = 0; q < len; ++q) out[g * out_stride + i0 + q] = static_cast<T>(sum[q] * scale);
                       });
}

/// The adjoint of routing_inputs: d_x[t, :] = d_routed[r, :] / count for every counted token t of a group whose
/// mean is router row r's input (r = layout.gradient_receiver(group of t)), 0 for other tokens (padding, and under
/// GateRows::per_group the last segment and segment 0's own detached routing). Overwrites d_x [S * L, I], or adds to it with `accumulate` (a layer's
/// routing path joins the gradient its main path already wrote).
template <class ExecSpace, MatrixOn<ExecSpace> DRouted, MatrixOn<ExecSpace> Mask, MatrixOn<ExecSpace> DX>
  requires MutableMatrix<DX> && std::same_as<typename Mask::non_const_value_type, std::uint8_t>
void routing_inputs_backward(const ExecSpace& space, const RoutingLayout& layout, const DRouted& d_routed,
                             const Mask& padding, const DX& d_x, bool accumulate = false) {
  using T = typename DX::value_type;
  constexpr const char* fn = "camex::routing_inputs_backward";
  detail::check_layout(fn, layout);
  require_nonempty(fn, "d_routed", d_routed, "[G, I] matrix");
  require_shape(fn, "d_routed", d_routed, layout.groups(), d_routed.extent(1), "[G, I] (layout.groups())");
  detail::check_padding_mask(fn, padding, layout);
  require_shape(fn, "d_x", d_x, layout.tokens(), d_routed.extent(1),
                        "[S * L, I] (layout.sequences * layout.length, d_routed.extent(1))");
  require_disjoint(fn, "d_x", d_x, "d_routed", d_routed);

  const std::size_t width = d_x.extent(1), groups = layout.groups(), per = layout.group_length();
  constexpr std::size_t tile = detail::routing_tile<ExecSpace>();
  const std::size_t tiles = (width + tile - 1) / tile;
  const bool masked = padding.extent(0) != 0 && layout.padding == Padding::exclude;
  const std::uint8_t* real = padding.data();
  const auto in_stride = row_stride(d_routed), out_stride = row_stride(d_x);
  const auto* d_in = d_routed.data();
  T* out = d_x.data();
  Kokkos::parallel_for("camex::routing_inputs_backward", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * tiles),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t g = w / tiles, i0 = w % tiles * tile;
                         const std::size_t len = width - i0 < tile ? width - i0 : tile;
                         const std::size_t first = g * per, receiver = layout.gradient_receiver(g);
                         std::size_t count = 0;
                         for (std::size_t t = first; t < first + per; ++t) count += !masked || real[t] != 0;
                         const bool flows = receiver < groups && count > 0;
                         const T scale = flows ? static_cast<T>(1.0 / static_cast<double>(count)) : T(0);
                         const auto* d = d_in + (flows ? receiver : 0) * in_stride + i0;
                         for (std::size_t t = first; t < first + per; ++t) {
                           const T weight = (!masked || real[t] != 0) ? scale : T(0);
                           T* row = out + t * out_stride + i0;
                           for (std::size_t q = 0; q < len; ++q) row[q] = (accumulate ? row[q] : T(0)) + weight * d[q];
                         }
                       });
}

/// scores[g, :] = gates[layout.gate_row(g), :]: the scores each routing group merges with, from the router's rows.
/// gates and scores [G, n].
template <class ExecSpace, MatrixOn<ExecSpace> Gates, MatrixOn<ExecSpace> Scores>
  requires MutableMatrix<Scores>
void merge_scores(const ExecSpace& space, const RoutingLayout& layout, const Gates& gates, const Scores& scores) {
  constexpr const char* fn = "camex::merge_scores";
  detail::check_layout(fn, layout);
  require_nonempty(fn, "gates", gates, "[G, n] matrix of router rows");
  require_shape(fn, "gates", gates, layout.groups(), gates.extent(1), "[G, n] (layout.groups())");
  require_shape(fn, "scores", scores, layout.groups(), gates.extent(1), "[G, n], the shape of gates");
  require_disjoint(fn, "scores", scores, "gates", gates);
  const std::size_t n = gates.extent(1);
  Kokkos::parallel_for("camex::merge_scores", Kokkos::RangePolicy<ExecSpace>(space, 0, layout.groups() * n),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t g = w / n, j = w % n;
                         scores(g, j) = gates(layout.gate_row(g), j);
                       });
}

/// The adjoint of merge_scores with the detached merges left out: d_gates[r, :] = the sum of d_scores[g, :] over
/// the groups g that merge with row r (gate_row(g) = r) and are not merge_detached(g). Overwrites d_gates [G, n].
template <class ExecSpace, MatrixOn<ExecSpace> DScores, MatrixOn<ExecSpace> DGates>
  requires MutableMatrix<DGates>
void merge_scores_backward(const ExecSpace& space, const RoutingLayout& layout, const DScores& d_scores,
                           const DGates& d_gates) {
  using T = typename DGates::value_type;
  constexpr const char* fn = "camex::merge_scores_backward";
  detail::check_layout(fn, layout);
  require_nonempty(fn, "d_scores", d_scores, "[G, n] matrix");
  require_shape(fn, "d_scores", d_scores, layout.groups(), d_scores.extent(1), "[G, n] (layout.groups())");
  require_shape(fn, "d_gates", d_gates, layout.groups(), d_scores.extent(1), "[G, n], the shape of d_scores");
  require_disjoint(fn, "d_gates", d_gates, "d_scores", d_scores);
  const std::size_t n = d_scores.extent(1), groups = layout.groups();
  Kokkos::parallel_for("camex::merge_scores_backward", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * n),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t r = w / n, j = w % n;
                         // Only group r itself and the next segment can merge with row r.
                         T sum = 0;
                         for (std::size_t g = r; g < groups && g <= r + 1; ++g)
                           if (layout.gate_row(g) == r && !layout.merge_detached(g)) sum += d_scores(g, j);
                         d_gates(r, j) = sum;
                       });
}

}  // namespace camex
