#pragma once
// The two ways to evaluate a merged affine map y_t = W_g x_t (docs/algorithms.md §9), and the cost model that picks one.
//
//   merge_then_apply: W_g = sum_j C[g, j] R_j per routing group, then one GEMM of the group's L tokens with W_g.
//   apply_then_mix:   Z_j = X R_j^T for the m prepared rows over all N tokens, then y_t = sum_j C[g, j] Z_j[t].
//
// Forward plus backward of one [O, I] map with P = O I, N tokens in G groups, m rows, s bytes per scalar:
//
//                       GEMM flops            bytes moved outside GEMMs
//   merge_then_apply    6 N P                 s P (3 G + 3 m): write W_g and dL/dW_g, read both back, rows in/out
//                       + 6 G m P (merges)
//   apply_then_mix      6 N m P               s (3 N m O + 3 N O + m P): Z written, read by the mix and by dL/dC,
//                                              dL/dy read twice, the rows written once
//
// Merging costs G weight matrices of traffic and G m P flops; applying costs m times the GEMMs. With m = 8 and a
// machine balance of 8 flop/byte, apply_then_mix wins at 1 or 2 tokens per group (per-token routing), and
// needs no per-group weights at all (G P scalars of workspace, twice, for merge_then_apply). The estimate counts
// the GEMMs at the machine's GEMM rate and every other byte at its streaming bandwidth; `flops_per_byte` is their
// ratio (SGEMM GFLOP/s over triad GB/s: benchmarks/ceilings measures both, docs/performance.md records them).

#include <cstddef>

namespace camex {

enum class EvaluationOrder {
  automatic,         ///< the cheaper of the two by estimated_cost, where the policy allows both
  merge_then_apply,  ///< one merged matrix per routing group (any merge policy)
  apply_then_mix,    ///< every prepared row applied to every token, mixed by the coefficients (RowCombinationPolicy)
};

struct EvaluationOptions {
  EvaluationOrder order = EvaluationOrder::automatic;
  double flops_per_byte = 8;  ///< the machine's GEMM flop rate over its streaming bandwidth
};

/// The sizes the two orders' costs depend on.
struct AffineShape {
  std::size_t tokens = 0, groups = 0, rows = 0, outputs = 0, inputs = 0, scalar_bytes = 4;
};

struct EvaluationCost {
  double gemm_flops = 0, other_flops = 0, bytes = 0;
  /// In flop-equivalents: GEMM flops, plus the rest as whichever of flops and bytes dominates.
  double total(double flops_per_byte) const {
    const double memory = flops_per_byte * bytes;
    return gemm_flops + (memory > other_flops ? memory : other_flops);
  }
};

/// Forward plus backward of one merged affine map (see the table above); `order` is not automatic.
inline EvaluationCost estimated_cost(EvaluationOrder order, const AffineShape& a) {
  const double n = static_cast<double>(a.tokens), g = static_cast<double>(a.groups), m = static_cast<double>(a.rows);
  const double o = static_cast<double>(a.outputs), p = o * static_cast<double>(a.inputs), s = static_cast<double>(a.scalar_bytes);
  if (order == EvaluationOrder::apply_then_mix)
    return {.gemm_flops = 6 * n * m * p, .other_flops = 6 * n * m * o, .bytes = s * (3 * n * m * o + 3 * n * o + m * p)};
  return {.gemm_flops = 6 * n * p, .other_flops = 6 * g * m * p, .bytes = s * p * (3 * g + 3 * m)};
}

/// The order `options` asks for, or the cheaper one when it asks for automatic (ties: merge_then_apply).
inline EvaluationOrder choose_order(const EvaluationOptions& options, const AffineShape& shape) {
  if (options.order != EvaluationOrder::automatic) return options.order;
  const double merge = estimated_cost(EvaluationOrder::merge_then_apply, shape).total(options.flops_per_byte);
  const double apply = estimated_cost(EvaluationOrder::apply_then_mix, shape).total(options.flops_per_byte);
  return apply < merge ? EvaluationOrder::apply_then_mix : EvaluationOrder::merge_then_apply;
}

}  // namespace camex
