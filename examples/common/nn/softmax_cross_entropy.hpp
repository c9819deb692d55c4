#pragma once
// Softmax cross-entropy over the rows of a logits matrix [N, K], in place: the forward turns the logits into
// probabilities (one exp per logit, branch-free in float so the host vectorises it, normalised after: a language model's
// V x N exps are a large part of its step) and returns the summed loss -log p[target] and how many rows' largest
// logit is the target (the first largest on ties); the backward turns the probabilities into d_logits = (p - onehot(target)) d_loss / N. Sums are in double:
// each row's terms are kept, then added in row order, so they have the same bits on any number of threads; the
// host reads back the two sums.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>

#include <camex/kernels/row_spans.hpp>
#include <camex/platform/branch_free_math.hpp>
#include <camex/platform/vectorize.hpp>

#include "tensor.hpp"

namespace camex::examples {

/// What the forward sums over rows.
struct CrossEntropySums {
  double loss = 0;     ///< sum of -log p[target]
  double correct = 0;  ///< rows whose first largest logit is the target
};

/// Lanes of the forward's row passes: each keeps its own running maximum and sum over the entries v = j mod lanes,
/// so the passes vectorise (a single running maximum or double sum is a dependency chain that does not); the
/// lanes are combined in a fixed order, so the result does not depend on the thread count.
inline constexpr std::size_t cross_entropy_lanes = 16;

/// Doubles of the `row_terms` workspace the forward needs for N rows: each row's two terms, then the two sums.
inline std::size_t cross_entropy_row_terms(std::size_t rows) { return 2 * rows + 2; }

/// Rows of `logits` [N, K] become their softmax; targets [N] are class ids below K. The sums cover the first
/// `counted` rows (all by default: a batch completed by repeats counts only its real rows). `row_terms` holds
/// cross_entropy_row_terms(N) doubles.
template <class Space, class T>
CrossEntropySums softmax_cross_entropy_forward(const Space& space, const Mat<T, Space>& logits, const TokenIds<Space>& targets,
                                               const Kokkos::View<double*, typename Space::memory_space>& row_terms,
                                               std::size_t counted = static_cast<std::size_t>(-1)) {
  constexpr const char* fn = "softmax_cross_entropy_forward";
  constexpr std::size_t lanes = cross_entropy_lanes;
  const std::size_t n = logits.extent(0), k = logits.extent(1), whole = k / lanes * lanes;
  require_length(fn, "targets", targets, n, "the logits' rows");
  if (row_terms.extent(0) < cross_entropy_row_terms(n))
    throw argument_error(fn, "row_terms", concat(cross_entropy_row_terms(n), " doubles (2 N + 2)"),
                         concat(row_terms.extent(0), " doubles"));
  if (counted > n) counted = n;
  Kokkos::parallel_for("softmax_cross_entropy_forward", Kokkos::RangePolicy<Space>(space, 0, n),
                          KOKKOS_LAMBDA(std::size_t t) {
                            T lane_top[lanes];
                            for (std::size_t j = 0; j < lanes; ++j) lane_top[j] = logits(t, 0);
                            for (std::size_t v = 0; v < whole; v += lanes) {
                              CAMEX_VECTOR_LANES
                              for (std::size_t j = 0; j < lanes; ++j)
                                lane_top[j] = logits(t, v + j) > lane_top[j] ? logits(t, v + j) : lane_top[j];
                            }
                            T top = logits(t, 0);
                            for (std::size_t j = 0; j < lanes; ++j) top = lane_top[j] > top ? lane_top[j] : top;
                            for (std::size_t v = whole; v < k; ++v) top = logits(t, v) > top ? logits(t, v) : top;
                            std::size_t best = 0;  // the first largest logit
                            while (!(logits(t, best) == top) && best + 1 < k) ++best;
                            const double target = static_cast<double>(logits(t, targets(t)) - top);
                            double lane_z[lanes] = {};
                            for (std::size_t v = 0; v < whole; v += lanes) {
                              CAMEX_VECTOR_LANES
                              for (std::size_t j = 0; j < lanes; ++j) {
                                const T e = math::elementwise_exp(logits(t, v + j) - top);
                                logits(t, v + j) = e;
                                lane_z[j] += e;
                              }
                            }
                            for (std::size_t v = whole; v < k; ++v) {
                              const T e = math::elementwise_exp(logits(t, v) - top);
                              logits(t, v) = e;
                              lane_z[v - whole] += e;
                            }
                            double z = 0;
                            for (std::size_t j = 0; j < lanes; ++j) z += lane_z[j];
                            const bool in_sums = t < counted;
                            row_terms(2 * t) = in_sums ? math::log(z) - target : 0.0;
                            row_terms(2 * t + 1) = in_sums && static_cast<std::int32_t>(best) == targets(t) ? 1.0 : 0.0;
                            const T inverse = static_cast<T>(1 / z);
                            CAMEX_IVDEP
                            for (std::size_t v = 0; v < k; ++v) logits(t, v) *= inverse;
                          });
  Kokkos::parallel_for("softmax_cross_entropy_forward[sums]", Kokkos::RangePolicy<Space>(space, 0, 1), KOKKOS_LAMBDA(std::size_t) {
    double loss = 0, correct = 0;
    for (std::size_t t = 0; t < n; ++t) {
      loss += row_terms(2 * t);
      correct += row_terms(2 * t + 1);
    }
    row_terms(2 * n) = loss;
    row_terms(2 * n + 1) = correct;
  });
  double sums[2];
  Kokkos::deep_copy(space, Kokkos::View<double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(sums, 2),
                    Kokkos::subview(row_terms, Kokkos::make_pair(2 * n, 2 * n + 2)));
  space.fence();
  return {.loss = sums[0], .correct = sums[1]};
}

/// The probabilities of the last forward become d_logits (in place) for the loss d_loss x (mean over rows).
template <class Space, class T>
void softmax_cross_entropy_backward(const Space& space, const Mat<T, Space>& probabilities, const TokenIds<Space>& targets,
                                    double d_loss) {
  const std::size_t n = probabilities.extent(0), k = probabilities.extent(1);
  require_length("softmax_cross_entropy_backward", "targets", targets, n, "the probabilities' rows");
  const T scale = static_cast<T>(d_loss / static_cast<double>(n));
  for_each_row_span(space, "softmax_cross_entropy_backward", n, k,
                    KOKKOS_LAMBDA(std::size_t t, std::size_t begin, std::size_t end) {
                      const std::size_t target = static_cast<std::size_t>(targets(t));
                      CAMEX_IVDEP
                      for (std::size_t v = begin; v < end; ++v)
                        probabilities(t, v) = scale * (probabilities(t, v) - (v == target ? T(1) : T(0)));
                    });
}

}  // namespace camex::examples
