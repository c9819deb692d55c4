#pragma once
// Softmax cross-entropy over the rows of a logits matrix [N, K], in place: the forward turns the logits into
// probabilities (one exp per logit, normalised after: a language model's V x N exps are a large part of its step)
// and returns the summed loss -log p[target] and how many rows' largest logit is the target (the first largest on
// ties); the backward turns the probabilities into d_logits = (p - onehot(target)) d_loss / N. Sums are in double,
// by one reduction whose order depends on the thread count only; the host reads back its one result.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>

#include "tensor.hpp"

namespace camex::examples {

/// What the forward sums over rows.
struct CrossEntropySums {
  double loss = 0;     ///< sum of -log p[target]
  double correct = 0;  ///< rows whose first largest logit is the target

  KOKKOS_INLINE_FUNCTION CrossEntropySums& operator+=(const CrossEntropySums& other) {
    loss += other.loss;
    correct += other.correct;
    return *this;
  }
  // Kokkos 3.4 joins reductions through volatile references.
  KOKKOS_INLINE_FUNCTION void operator+=(const volatile CrossEntropySums& other) volatile {
    loss = loss + other.loss;
    correct = correct + other.correct;
  }
};

/// Rows of `logits` [N, K] become their softmax; targets [N] are class ids below K. The sums cover the first
/// `counted` rows (all by default: a batch completed by repeats counts only its real rows).
template <class Space, class T>
CrossEntropySums softmax_cross_entropy_forward(const Space& space, const Mat<T, Space>& logits, const TokenIds<Space>& targets,
                                               std::size_t counted = static_cast<std::size_t>(-1)) {
  const std::size_t n = logits.extent(0), k = logits.extent(1);
  require_length("softmax_cross_entropy_forward", "targets", targets, n, "the logits' rows");
  if (counted > n) counted = n;
  CrossEntropySums total;
  Kokkos::parallel_reduce("softmax_cross_entropy_forward", Kokkos::RangePolicy<Space>(space, 0, n),
                          KOKKOS_LAMBDA(std::size_t t, CrossEntropySums& sums) {
                            T top = logits(t, 0);
                            std::size_t best = 0;
                            for (std::size_t v = 1; v < k; ++v)
                              if (logits(t, v) > top) {
                                top = logits(t, v);
                                best = v;
                              }
                            const double target = static_cast<double>(logits(t, targets(t)) - top);
                            double z = 0;
                            for (std::size_t v = 0; v < k; ++v) {
                              const T e = math::exp(logits(t, v) - top);
                              logits(t, v) = e;
                              z += e;
                            }
                            if (t < counted) {
                              sums.loss += math::log(z) - target;
                              sums.correct += static_cast<std::int32_t>(best) == targets(t) ? 1.0 : 0.0;
                            }
                            const T inverse = static_cast<T>(1 / z);
                            for (std::size_t v = 0; v < k; ++v) logits(t, v) *= inverse;
                          },
                          total);
  return total;
}

/// The probabilities of the last forward become d_logits (in place) for the loss d_loss x (mean over rows).
template <class Space, class T>
void softmax_cross_entropy_backward(const Space& space, const Mat<T, Space>& probabilities, const TokenIds<Space>& targets,
                                    double d_loss) {
  const std::size_t n = probabilities.extent(0), k = probabilities.extent(1);
  require_length("softmax_cross_entropy_backward", "targets", targets, n, "the probabilities' rows");
  const T scale = static_cast<T>(d_loss / static_cast<double>(n));
  Kokkos::parallel_for("softmax_cross_entropy_backward", Kokkos::RangePolicy<Space>(space, 0, n * k),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t t = w / k, v = w % k;
                         probabilities(t, v) = scale * (probabilities(t, v) - (static_cast<std::int32_t>(v) == targets(t) ? T(1) : T(0)));
                       });
}

}  // namespace camex::examples
