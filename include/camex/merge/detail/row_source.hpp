#pragma once
// The rows a composed merge combines (docs/algorithms.md §4): R = [f .* tau_1 .. f .* tau_n, base] with
// tau_i = E_i - base (E_i where there is no base) and f the mask's elementwise factor; and their adjoint on the way
// back to the experts and the base. Launchers and the tile generator only: ComposedPolicy decides what is
// materialised when (merge/detail/step_cache.hpp).

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>

#include "camex/core/views.hpp"
#include "camex/kernels/non_finite.hpp"
#include "camex/kernels/row_combination.hpp"
#include "camex/platform/vectorize.hpp"

namespace camex::detail {

/// The row source of a composition, generating any tile of R from the experts and the base: tau_i, times the
/// mask's factor where `masked`, then the base as the last row where `base_row`. A row source of
/// kernels/row_combination.hpp (materialise_rows, generated_row_combination).
template <class Scalar, class Factor>
struct DeltaRows {
  const Scalar* experts;
  std::ptrdiff_t experts_stride;
  int n;
  const Scalar* base;  // null: the deltas are the experts
  bool base_row;
  bool masked;
  Factor factor;
  NonFiniteScan scan;  // armed: check each delta as it is formed, at position i * length + p
  std::size_t length;

  KOKKOS_INLINE_FUNCTION int count() const { return n + (base_row ? 1 : 0); }

  KOKKOS_INLINE_FUNCTION void generate(std::size_t p0, int len, Scalar* out, std::ptrdiff_t stride) const {
    // Short pieces of every expert in turn rather than one expert's whole tile after another, so the loads of
    // all n rows are in flight together, and each piece asks for the same piece of the next tile (a thread's
    // tiles are consecutive): a memory-bound tile stays busy.
    constexpr int piece = 64, line = 64 / static_cast<int>(sizeof(Scalar));
    for (int q0 = 0; q0 < len; q0 += piece) {
      const int q1 = len - q0 < piece ? len : q0 + piece;
      for (int i = 0; i < n; ++i) {
        const Scalar* e = experts + i * experts_stride + p0;
        Scalar* o = out + i * stride;
        for (int q = q0; q < q1; q += line) prefetch_for_read(e + len + q);
        if (base) {
          const Scalar* b = base + p0;
          CAMEX_IVDEP
          for (int q = q0; q < q1; ++q) o[q] = e[q] - b[q];
        } else {
          CAMEX_IVDEP
          for (int q = q0; q < q1; ++q) o[q] = e[q];
        }
        if (scan) scan.check(o + q0, q1 - q0, static_cast<std::size_t>(i) * length + p0 + q0);
      }
    }
    if (masked) factor.template apply<true>(p0, len, out, stride, out, stride);
    if (base_row) {
      Scalar* o = out + n * stride;
      CAMEX_IVDEP
      for (int q = 0; q < len; ++q) o[q] = base[p0 + q];
    }
  }
};

/// factor = f, the mask's elementwise factor of the deltas tau [n, P], tile by tile.
template <class ExecSpace, class Scalar, class Factor, class FactorView>
void materialise_factor(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& tau, const Factor& element,
                        const FactorView& factor) {
  const Scalar* x = tau.data();
  Scalar* f = factor.data();
  const auto x_stride = row_stride(tau), f_stride = row_stride(factor);
  for_each_tile(space, "camex::ComposedPolicy[factor]", tau.extent(1), tile_length<Scalar>(static_cast<int>(tau.extent(0))),
                KOKKOS_LAMBDA(std::size_t p0, int len) { element.template apply<false>(p0, len, x + p0, x_stride, f + p0, f_stride); });
}

/// d_rows[r] += c d_next for the n delta rows and += d_next for the base row: the adjoint a propagated base
/// (dynamic merging, docs/algorithms.md §4.6) sends into the rows.
template <class ExecSpace, class DNext, class DRows>
void add_upstream_adjoint(const ExecSpace& space, const DNext& d_next, double coefficient, std::size_t n, const DRows& d_rows) {
  using Scalar = typename DRows::value_type;
  const std::size_t params = d_rows.extent(1), nrows = d_rows.extent(0);
  const Scalar c = static_cast<Scalar>(coefficient);
  Kokkos::parallel_for("camex::ComposedPolicy[upstream]", Kokkos::RangePolicy<ExecSpace>(space, 0, nrows * params),
                       KOKKOS_LAMBDA(std::size_t k) {
                         const std::size_t r = k / params, p = k % params;
                         d_rows(r, p) += (r < n ? c : Scalar(1)) * d_next(0, p);
                       });
}

/// The base's share of the rows' adjoint: d_base = d_rows[n] - sum_i d_tau_i (overwritten), with d_tau_i already in
/// d_experts' n rows. With the base taken from expert j (`into_expert`), that sum is added to d_experts' row j and
/// d_base is not touched.
template <class ExecSpace, class DRows, class DExperts>
void base_gradient(const ExecSpace& space, const DRows& d_rows, const DExperts& d_experts, bool into_expert,
                   std::size_t expert, typename DExperts::value_type* d_base) {
  using Scalar = typename DExperts::value_type;
  const int n = static_cast<int>(d_experts.extent(0));
  Scalar* out = into_expert ? d_experts.data() + expert * row_stride(d_experts) : d_base;
  const std::size_t params = d_experts.extent(1);
  if constexpr (static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible)) {
    // A run of entries per work item, the experts' rows subtracted one after another: the loop vectorises.
    constexpr std::size_t run = 2048;
    const Scalar* d_r = d_rows.data();
    const Scalar* d_e = d_experts.data();
    const std::ptrdiff_t r_stride = row_stride(d_rows), e_stride = row_stride(d_experts);
    Kokkos::parallel_for("camex::ComposedPolicy[d_base]", Kokkos::RangePolicy<ExecSpace>(space, 0, (params + run - 1) / run),
                         [=](std::size_t t) {
                           const std::size_t p0 = t * run, len = std::min(run, params - p0);
                           Scalar sum[run];
                           CAMEX_IVDEP
                           for (std::size_t q = 0; q < len; ++q) sum[q] = d_r[n * r_stride + p0 + q];
                           for (int i = 0; i < n; ++i) {
                             CAMEX_IVDEP
                             for (std::size_t q = 0; q < len; ++q) sum[q] -= d_e[i * e_stride + p0 + q];
                           }
                           CAMEX_IVDEP
                           for (std::size_t q = 0; q < len; ++q) out[p0 + q] = into_expert ? out[p0 + q] + sum[q] : sum[q];
                         });
  } else {
    Kokkos::parallel_for("camex::ComposedPolicy[d_base]", Kokkos::RangePolicy<ExecSpace>(space, 0, params),
                         KOKKOS_LAMBDA(std::size_t p) {
                           Scalar sum = d_rows(n, p);
                           for (int i = 0; i < n; ++i) sum -= d_experts(i, p);
                           out[p] = into_expert ? out[p] + sum : sum;
                         });
  }
}

}  // namespace camex::detail
