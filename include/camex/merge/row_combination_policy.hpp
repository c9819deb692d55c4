#pragma once
// A merge policy whose merge is a linear combination of rows prepared once per step: merged = C(scores) R, with
// R [m, P] input-independent and C [B, m] a function of the scores alone. Every composition (merge/composed.hpp)
// is one: R = [D_1 .. D_n, base], C[b, i] = alpha kappa[b, i] s[b, i], C[b, n] = 1.
//
// Exposing R and C lets a linear layer apply the rows instead of the merged tensors (docs/algorithms.md §9: W_b x = sum_j
// C[b, j] (R_j x)), which is cheaper when routing groups hold few tokens, and never forms one weight matrix per
// group. The layer then owes the policy dL/dC and dL/dR instead of dL/dmerged:
//
//   m   = p.row_count()                                                  before the first step, for workspaces
//   R   = p.prepared_rows(space, workspace)                              after prepare; [m, P]
//   C   = p.coefficients(space, scores, workspace)                       [B, m]
//   p.backward_from_rows(space, scores, d_coef, d_rows, d_scores, d_experts, d_base, workspace)
//
// backward_from_rows writes what backward writes (d_scores, d_experts, d_base, the policy's parameter gradients)
// and may overwrite d_rows.

#include <concepts>

#include "camex/merge/concepts.hpp"

namespace camex {

template <class P>
concept RowCombinationPolicy =
    MergePolicy<P> &&
    requires(P& policy, const P& cpolicy, const typename P::execution_space& space,
             const Workspace<typename P::execution_space>& workspace,
             const ConstMatrix<typename P::scalar_type, typename P::execution_space>& in,
             const Matrix<typename P::scalar_type, typename P::execution_space>& out) {
      { cpolicy.row_count() } -> std::convertible_to<std::size_t>;
      { policy.prepared_rows(space, workspace) } -> std::convertible_to<ConstMatrix<typename P::scalar_type, typename P::execution_space>>;
      { cpolicy.coefficients(space, in, workspace) } -> std::convertible_to<ConstMatrix<typename P::scalar_type, typename P::execution_space>>;
      policy.backward_from_rows(space, in, in, out, out, out, out, workspace);
    };

}  // namespace camex
