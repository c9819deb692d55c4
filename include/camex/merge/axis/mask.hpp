#pragma once
// The mask axis of a composed policy (docs/policies/README.md: mask × transform × base): what happens to the deltas tau_i = E_i - base before they are
// merged. Every mask camex knows is one of two shapes, and may be both:
//  * an elementwise factor f[i, p], a function of the deltas at p (and of whole-tensor statistics such as the
//    TIES trim, gathered once per step by `prepare`): masked delta = f[i] .* x[i], where x is tau
//    (MaskPlacement::on_delta) or the transformed tau~ (on_transformed);
//  * a factor kappa[b, i] on each routing group's score (expert-level dropout).
// The factor is handed out as a small device-callable object that computes f over any run of parameters, so the
// policy can apply it where the deltas already sit in L1 (inside the merge) or materialise it; the mask never
// owns a [n, P] buffer of its own factor.
#include <Kokkos_Core.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>

#include "camex/core/workspace.hpp"
#include "camex/platform/vectorize.hpp"
#include "camex/merge/concepts.hpp"

namespace camex {

/// Where an elementwise mask applies: to the raw deltas before the transform (the paper's TIES and DARE), or to
/// the transformed deltas (the CAMEx code's TIES, whose mask is computed from the raw deltas nonetheless).
enum class MaskPlacement { on_delta, on_transformed };

/// kappa[b, i] = 1: the score factor of masks that have none.
struct UnitScoreFactor {
  KOKKOS_INLINE_FUNCTION double operator()(std::size_t, std::size_t) const { return 1.0; }
};

/// What the composed policy asks of a mask over Scalar on ExecSpace.
///   factor_active(step) / score_factor_active(step): whether f / kappa differ from 1 in this step;
///   needs_deltas(step): whether prepare reads the deltas as a whole (then the policy materialises them);
///   layout<T>(carver, problem): carves the mask's state (what prepare gathers, and its scratch), called in the
///     same place of the policy's workspace before every use;
///   prepare(space, step, tau, state): gathers what f needs beyond the deltas at p;
///   element_factor(step, state): a copyable object whose apply<multiply>(p0, len, tau, tau_stride, out,
///     out_stride) writes f[i, p0 + q] (or f[i, p0 + q] tau[i, p0 + q] when `multiply`) to out[i * out_stride + q]
///     for q < len and every expert i, reading tau[i * tau_stride + q] (both pointers start at entry p0); out may
///     be tau itself, and it is callable in device code;
///   adjoint(space, step, tau, factor, d_masked, d_tau, state): d_tau from d_masked (f .* d_masked for factors
///     that are piecewise constant in tau), with `factor` materialised;
///   score_factor(step): a device-callable kappa(b, i).
template <class M, class ExecSpace, class T>
concept MaskAxis = requires(const M& mask, const StepContext& step, const MergeProblem& problem, const ExecSpace& space,
                            WorkspaceCarver<ExecSpace>& carver, const ConstMatrix<T, ExecSpace>& in,
                            const typename WorkspaceCarver<ExecSpace>::template Matrix<T>& out,
                            std::size_t p0, int len, const T* tau, T* masked, std::ptrdiff_t stride) {
  { mask.factor_active(step) } -> std::same_as<bool>;
  { mask.score_factor_active(step) } -> std::same_as<bool>;
  { mask.needs_deltas(step) } -> std::same_as<bool>;
  { mask.placement() } -> std::same_as<MaskPlacement>;
  mask.prepare(space, step, in, mask.template layout<T>(carver, problem));
  mask.element_factor(step, mask.template layout<T>(carver, problem)).template apply<true>(p0, len, tau, stride, masked, stride);
  mask.element_factor(step, mask.template layout<T>(carver, problem)).template apply<false>(p0, len, tau, stride, masked, stride);
  mask.adjoint(space, step, in, in, in, out, mask.template layout<T>(carver, problem));
  { mask.score_factor(step)(std::size_t{}, std::size_t{}) } -> std::convertible_to<double>;
};

namespace detail {

/// d_tau = f .* d_masked: the adjoint of a factor that is piecewise constant in the deltas. On host spaces a
/// work item takes a run of one row, so the loop vectorises and no entry pays for an index division.
template <class ExecSpace, class Factor, class In, class Out>
void multiply_elementwise(const ExecSpace& space, const Factor& factor, const In& in, const Out& out) {
  const std::size_t rows = out.extent(0), cols = out.extent(1);
  constexpr bool host = Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible;
  if constexpr (host) {
    if (factor.stride(1) == 1 && in.stride(1) == 1 && out.stride(1) == 1) {
      constexpr std::size_t run = 4096;
      const std::size_t runs = (cols + run - 1) / run;
      const auto* f = factor.data();
      const auto* x = in.data();
      auto* y = out.data();
      const std::size_t fs = factor.stride(0), xs = in.stride(0), ys = out.stride(0);
      Kokkos::parallel_for("camex::multiply_elementwise", Kokkos::RangePolicy<ExecSpace>(space, 0, rows * runs),
                           [=](std::size_t k) {
                             const std::size_t i = k / runs, p0 = k % runs * run, p1 = std::min(p0 + run, cols);
                             CAMEX_IVDEP
                             for (std::size_t p = p0; p < p1; ++p) y[i * ys + p] = f[i * fs + p] * x[i * xs + p];
                           });
      return;
    }
  }
  Kokkos::parallel_for("camex::multiply_elementwise", Kokkos::RangePolicy<ExecSpace>(space, 0, rows * cols),
                       KOKKOS_LAMBDA(std::size_t k) {
                         const std::size_t i = k / cols, p = k % cols;
                         out(i, p) = factor(i, p) * in(i, p);
                       });
}

}  // namespace detail

/// f = 1.
struct UnitFactor {
  template <bool Multiply, class T>
  KOKKOS_INLINE_FUNCTION void apply(std::size_t, int len, const T* tau, std::ptrdiff_t tau_stride, T* out,
                                    std::ptrdiff_t out_stride) const {
    for (int i = 0; i < rows; ++i) {
      if (Multiply && out == tau && out_stride == tau_stride) continue;
      CAMEX_IVDEP
      for (int q = 0; q < len; ++q) out[i * out_stride + q] = Multiply ? tau[i * tau_stride + q] : T(1);
    }
  }
  int rows;
};

/// The identity mask.
struct NoMask {
  struct State {
    int experts;
  };
  bool factor_active(const StepContext&) const { return false; }
  bool score_factor_active(const StepContext&) const { return false; }
  bool needs_deltas(const StepContext&) const { return false; }
  MaskPlacement placement() const { return MaskPlacement::on_delta; }
  template <class T, class Carver>
  State layout(Carver&, const MergeProblem& problem) const { return {static_cast<int>(problem.experts)}; }
  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace&, const StepContext&, const Tau&, const State&) const {}
  UnitFactor element_factor(const StepContext&, const State& state) const { return {state.experts}; }
  template <class ExecSpace, class Tau, class Factor, class In, class Out>
  void adjoint(const ExecSpace& space, const StepContext&, const Tau&, const Factor& factor, const In& d_masked,
               const Out& d_tau, const State&) const {
    detail::multiply_elementwise(space, factor, d_masked, d_tau);
  }
  UnitScoreFactor score_factor(const StepContext&) const { return {}; }
};

}  // namespace camex
