#pragma once
// Two masks in a row (docs/policies/README.md: mask × transform × base): the second mask sees the first one's masked deltas, m = f1 .* tau, as its
// deltas, so the masked delta is f2(m) .* m. mergekit's dare_ties is MaskSequence<DareMask, TiesMask>: DARE's
// random drop and rescale, then TIES's sign election and disjoint mean over what survived.
//
// prepare materialises f1 and m (two [n, P] buffers of the workspace) because the second mask's statistics (the
// TIES trim, the election) are functions of m as a whole; the factor handed to the merge reads m from there. The
// backward is the chain rule through both adjoints: d_m = adjoint2(m, f2, d_masked), d_tau = adjoint1(tau, f1, d_m).

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <utility>

#include "camex/core/error.hpp"
#include "camex/core/transfer.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/row_combination.hpp"
#include "camex/platform/vectorize.hpp"
#include "camex/merge/axis/mask.hpp"

namespace camex {

/// kappa1[b, i] kappa2[b, i].
template <class First, class Second>
struct ScoreFactorProduct {
  First first;
  Second second;
  bool first_active, second_active;
  KOKKOS_INLINE_FUNCTION double operator()(std::size_t b, std::size_t i) const {
    return (first_active ? first(b, i) : 1.0) * (second_active ? second(b, i) : 1.0);
  }
};

/// The factor of a sequence at any run of parameters: f = f1 .* f2(m), read from the prepared f1 and m.
template <class T, class SecondFactor>
struct SequenceFactor {
  SecondFactor second;
  bool second_active;
  const T* masked;  // m [n, P]
  const T* first;   // f1 [n, P]
  std::ptrdiff_t stride;
  int experts;

  template <bool Multiply, class U>
  KOKKOS_INLINE_FUNCTION void apply(std::size_t p0, int len, const U*, std::ptrdiff_t, U* out,
                                    std::ptrdiff_t out_stride) const {
    // The step's tau is the input; m = f1 .* tau is already in the workspace, so read that instead.
    if (second_active) {
      second.template apply<Multiply>(p0, len, masked + p0, stride, out, out_stride);
    } else {
      for (int i = 0; i < experts; ++i) {
        CAMEX_IVDEP
        for (int q = 0; q < len; ++q) out[i * out_stride + q] = Multiply ? masked[i * stride + p0 + q] : U(1);
      }
    }
    if constexpr (!Multiply) {
      for (int i = 0; i < experts; ++i) {
        CAMEX_IVDEP
        for (int q = 0; q < len; ++q) out[i * out_stride + q] *= first[i * stride + p0 + q];
      }
    }
  }
};

/// `second` applied to the deltas `first` has masked. Both must place their factor on the raw deltas
/// (MaskPlacement::on_delta).
template <class First, class Second>
struct MaskSequence {
  First first{};
  Second second{};

  template <class T, class Space>
  struct State {
    using FirstState = decltype(std::declval<const First&>().template layout<T>(
        std::declval<WorkspaceCarver<Space>&>(), std::declval<const MergeProblem&>()));
    using SecondState = decltype(std::declval<const Second&>().template layout<T>(
        std::declval<WorkspaceCarver<Space>&>(), std::declval<const MergeProblem&>()));
    FirstState first;
    SecondState second;
    typename WorkspaceCarver<Space>::template Matrix<T> masked, first_factor, d_masked_first;
  };

  /// Throws argument_error for a mask that does not act on the raw deltas, and for what either mask rejects.
  void check(const char* function, const MergeProblem& problem) const {
    if constexpr (requires { first.check(function, problem); }) first.check(function, problem);
    if constexpr (requires { second.check(function, problem); }) second.check(function, problem);
    if (first.placement() != MaskPlacement::on_delta)
      throw argument_error(function, "mask.first", "a mask on the raw deltas (MaskPlacement::on_delta)", "on_transformed");
    if (second.placement() != MaskPlacement::on_delta)
      throw argument_error(function, "mask.second", "a mask on the raw deltas (MaskPlacement::on_delta)",
                           "on_transformed (e.g. TiesVariant::sign_agreement)");
  }

  bool factor_active(const StepContext& step) const { return first.factor_active(step) || second.factor_active(step); }
  bool score_factor_active(const StepContext& step) const {
    return first.score_factor_active(step) || second.score_factor_active(step);
  }
  bool needs_deltas(const StepContext& step) const { return factor_active(step); }
  MaskPlacement placement() const { return MaskPlacement::on_delta; }

  template <class T, class Carver>
  State<T, typename Carver::execution_space> layout(Carver& carver, const MergeProblem& problem) const {
    const std::size_t n = problem.experts, params = problem.shape.params();
    State<T, typename Carver::execution_space> st{first.template layout<T>(carver, problem),
                                                  second.template layout<T>(carver, problem), {}, {}, {}};
    st.masked = carver.template take_matrix<T>(n, params);
    st.first_factor = carver.template take_matrix<T>(n, params);
    st.d_masked_first = carver.template take_matrix<T>(n, params);
    return st;
  }

  /// The first mask's statistics from tau, f1 and m = f1 .* tau, then the second mask's statistics from m.
  template <class ExecSpace, class Tau, class T>
  void prepare(const ExecSpace& space, const StepContext& step, const Tau& tau, const State<T, ExecSpace>& st) const {
    if (first.factor_active(step)) first.prepare(space, step, tau, st.first);
    const auto f1 = first.element_factor(step, st.first);
    const bool active = first.factor_active(step);
    const T* x = tau.data();
    T *f = st.first_factor.data(), *m = st.masked.data();
    const auto x_stride = row_stride(tau), stride = row_stride(st.masked);
    const int n = static_cast<int>(tau.extent(0));
    detail::for_each_tile(space, "camex::MaskSequence[first]", tau.extent(1), detail::tile_length<T>(2 * n),
                          KOKKOS_LAMBDA(std::size_t p0, int len) {
                            if (active) {
                              f1.template apply<false>(p0, len, x + p0, x_stride, f + p0, stride);
                            } else {
                              for (int i = 0; i < n; ++i)
                                for (int q = 0; q < len; ++q) f[i * stride + p0 + q] = T(1);
                            }
                            for (int i = 0; i < n; ++i) {
                              CAMEX_IVDEP
                              for (int q = 0; q < len; ++q)
                                m[i * stride + p0 + q] = f[i * stride + p0 + q] * x[i * x_stride + p0 + q];
                            }
                          });
    if (second.factor_active(step)) second.prepare(space, step, st.masked, st.second);
  }

  template <class T, class ExecSpace>
  auto element_factor(const StepContext& step, const State<T, ExecSpace>& st) const {
    using Factor = SequenceFactor<T, decltype(second.element_factor(step, st.second))>;
    return Factor{second.element_factor(step, st.second), second.factor_active(step), st.masked.data(),
                  st.first_factor.data(), row_stride(st.masked), static_cast<int>(st.masked.extent(0))};
  }

  /// d_m = adjoint2(m, f2, d_masked), then d_tau = adjoint1(tau, f1, d_m). f2 is materialised in d_tau, which
  /// the first adjoint then overwrites.
  template <class ExecSpace, class Tau, class Factor, class In, class Out, class T>
  void adjoint(const ExecSpace& space, const StepContext& step, const Tau& tau, const Factor&, const In& d_masked,
               const Out& d_tau, const State<T, ExecSpace>& st) const {
    const auto d_m = st.d_masked_first;
    if (second.factor_active(step)) {
      const auto f2 = second.element_factor(step, st.second);
      const T* m = st.masked.data();
      T* out = d_tau.data();
      const auto stride = row_stride(st.masked), out_stride = row_stride(d_tau);
      detail::for_each_tile(space, "camex::MaskSequence[second factor]", tau.extent(1),
                            detail::tile_length<T>(static_cast<int>(tau.extent(0))), KOKKOS_LAMBDA(std::size_t p0, int len) {
                              f2.template apply<false>(p0, len, m + p0, stride, out + p0, out_stride);
                            });
      second.adjoint(space, step, st.masked, d_tau, d_masked, d_m, st.second);
    } else {
      copy_matrix(space, d_m, d_masked);
    }
    if (first.factor_active(step))
      first.adjoint(space, step, tau, st.first_factor, d_m, d_tau, st.first);
    else
      copy_matrix(space, d_tau, d_m);
  }

  auto score_factor(const StepContext& step) const {
    return ScoreFactorProduct<decltype(first.score_factor(step)), decltype(second.score_factor(step))>{
        first.score_factor(step), second.score_factor(step), first.score_factor_active(step),
        second.score_factor_active(step)};
  }
};

}  // namespace camex
