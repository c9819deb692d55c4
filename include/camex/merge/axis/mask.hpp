#pragma once
// The mask axis of a composed policy (design §2): what happens to the deltas tau_i = E_i - base before they are
// merged. Every mask camex knows is one of two shapes, and may be both:
//  * an elementwise factor f[i, p], computed once per step from the deltas alone: masked delta = f[i] .* x[i],
//    where x is tau (MaskPlacement::on_delta) or the transformed tau~ (on_transformed);
//  * a factor kappa[b, i] on each routing group's score (expert-level dropout).
// A mask type states both through the members below; NoMask is the identity. The composed policy owns the
// buffers; a mask only fills them.

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>

#include "camex/core/workspace.hpp"
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
///   layout<T>(carver, problem): takes the scratch compute_factor needs (called identically before each use);
///   compute_factor(space, step, tau, factor, carver): fills f[n, P] from the deltas;
///   adjoint(space, tau, factor, d_masked, d_tau, carver): d_tau from d_masked (f .* d_masked for factors that
///     are piecewise constant in tau);
///   score_factor(step): a device-callable kappa(b, i).
template <class M, class ExecSpace, class T>
concept MaskAxis = requires(const M& mask, const StepContext& step, const MergeProblem& problem, const ExecSpace& space,
                            detail::WorkspaceCarver<ExecSpace>& carver, const ConstMatrix<T, ExecSpace>& in,
                            const typename detail::WorkspaceCarver<ExecSpace>::template Matrix<T>& out) {
  { mask.factor_active(step) } -> std::same_as<bool>;
  { mask.score_factor_active(step) } -> std::same_as<bool>;
  { mask.placement() } -> std::same_as<MaskPlacement>;
  mask.template layout<T>(carver, problem);
  mask.compute_factor(space, step, in, out, carver);
  mask.adjoint(space, in, in, in, out, carver);
  { mask.score_factor(step)(std::size_t{}, std::size_t{}) } -> std::convertible_to<double>;
};

namespace detail {

/// d_tau = f .* d_masked: the adjoint of a factor that is piecewise constant in the deltas.
template <class ExecSpace, class Factor, class In, class Out>
void multiply_elementwise(const ExecSpace& space, const Factor& factor, const In& in, const Out& out) {
  const std::size_t cols = out.extent(1);
  Kokkos::parallel_for("camex::multiply_elementwise", Kokkos::RangePolicy<ExecSpace>(space, 0, out.extent(0) * cols),
                       KOKKOS_LAMBDA(std::size_t k) {
                         const std::size_t i = k / cols, p = k % cols;
                         out(i, p) = factor(i, p) * in(i, p);
                       });
}

}  // namespace detail

/// The identity mask.
struct NoMask {
  bool factor_active(const StepContext&) const { return false; }
  bool score_factor_active(const StepContext&) const { return false; }
  MaskPlacement placement() const { return MaskPlacement::on_delta; }
  template <class T, class Carver>
  void layout(Carver&, const MergeProblem&) const {}
  template <class ExecSpace, class Tau, class Factor, class Carver>
  void compute_factor(const ExecSpace&, const StepContext&, const Tau&, const Factor&, Carver&) const {}
  template <class ExecSpace, class Tau, class Factor, class In, class Out, class Carver>
  void adjoint(const ExecSpace& space, const Tau&, const Factor& factor, const In& d_masked, const Out& d_tau,
               Carver&) const {
    detail::multiply_elementwise(space, factor, d_masked, d_tau);
  }
  UnitScoreFactor score_factor(const StepContext&) const { return {}; }
};

}  // namespace camex
