#pragma once
// The coefficients of a composed merge (docs/algorithms.md §4): C[b, i] = alpha kappa[b, i] s[b, i] for the n
// delta rows and C[b, n] = 1 for the base row, built on the execution space together with the step's status, and
// their backward d_s[b, i] = alpha kappa[b, i] d_C[b, i]. Launchers only: ComposedPolicy decides when they run and
// reads the status back.

#include <Kokkos_Core.hpp>

#include <cstddef>

#include "camex/kernels/non_finite.hpp"

namespace camex::detail {

/// What a step found in its operands and scores, written on the execution space and read back at once.
struct StepStatus {
  std::size_t first_bad_operand;    ///< position in [experts; base] of the first NaN or infinity, or no_position
  std::size_t first_bad_score;      ///< row-major position of the first non-finite score, or no_position
  std::size_t rows_summing_to_one;  ///< routing groups whose scores sum to 1 within the tolerance
};

/// coef[b, i] = alpha kappa[b, i] scores[b, i] for i < n and coef[b, n] = 1 where there is a base row, on the
/// execution space, recording in `status` the first non-finite score and the groups whose scores sum to 1 (within
/// `tolerance`, the sum taken in double); the operands' field is left as it is.
template <class ExecSpace, class Scores, class ScoreFactor, class Coefficients>
void build_coefficients(const ExecSpace& space, const Scores& scores, double alpha, bool kappa,
                        const ScoreFactor& factor, const Coefficients& coef, StepStatus* status, double tolerance) {
  using Scalar = typename Coefficients::value_type;
  const std::size_t n = scores.extent(1), nrows = coef.extent(1);
  Kokkos::parallel_for("camex::coefficients[reset]", Kokkos::RangePolicy<ExecSpace>(space, 0, 1),
                       KOKKOS_LAMBDA(std::size_t) {
                         status->first_bad_score = no_position;
                         status->rows_summing_to_one = 0;
                       });
  Kokkos::parallel_for("camex::coefficients", Kokkos::RangePolicy<ExecSpace>(space, 0, scores.extent(0)),
                       KOKKOS_LAMBDA(std::size_t g) {
                         double sum = 0;
                         for (std::size_t i = 0; i < n; ++i) {
                           const double s = scores(g, i);
                           if (s - s != 0) Kokkos::atomic_fetch_min(&status->first_bad_score, g * n + i);
                           sum += s;
                           coef(g, i) = static_cast<Scalar>(alpha * (kappa ? factor(g, i) : 1.0) * s);
                         }
                         if (nrows > n) coef(g, n) = Scalar(1);
                         if (sum - 1 <= tolerance && 1 - sum <= tolerance) Kokkos::atomic_add(&status->rows_summing_to_one, std::size_t{1});
                       });
}

/// d_scores[b, i] = alpha kappa[b, i] d_coef[b, i] for the n delta columns of d_coef (the base column has no score).
template <class ExecSpace, class DCoefficients, class ScoreFactor, class DScores>
void coefficients_backward(const ExecSpace& space, const DCoefficients& d_coef, double alpha, bool kappa,
                           const ScoreFactor& factor, const DScores& d_scores) {
  using Scalar = typename DScores::value_type;
  const std::size_t n = d_scores.extent(1);
  Kokkos::parallel_for("camex::coefficients[backward]", Kokkos::RangePolicy<ExecSpace>(space, 0, d_scores.extent(0) * n),
                       KOKKOS_LAMBDA(std::size_t k) {
                         const std::size_t g = k / n, i = k % n;
                         d_scores(g, i) = static_cast<Scalar>(alpha * (kappa ? factor(g, i) : 1.0) * d_coef(g, i));
                       });
}

}  // namespace camex::detail
