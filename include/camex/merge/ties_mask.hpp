#pragma once
// The TIES mask axis, as mergekit defines TIES (Yadav et al. 2023): trim each expert's delta to its `density`
// fraction of largest magnitudes, elect a sign per parameter from the weighted deltas, keep the entries that agree
// with it, and divide by the weight of the agreeing experts (the disjoint mean), times lambda.
//
// camex expresses any mask as an elementwise factor f[i, p], computed once per step from the deltas alone: the
// masked delta of expert i is f[i] .* tau[i], and a routing group b merges base + alpha * sum_i s[b, i] f[i] .* tau[i].
// The router scores take the place of mergekit's weights in the numerator; so when the scores equal `weights`
// (and alpha = 1) the merge is exactly mergekit's TIES. The factor is piecewise constant in tau, so the backward
// of the masked delta is the same factor applied to the incoming gradient.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

#include "camex/core/error.hpp"
#include "camex/core/top_k.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"

namespace camex {

/// How TIES elects the sign of each parameter (mergekit's `consensus_method`).
enum class SignElection {
  sum,    ///< the sign of sum_i w_i delta_i (the TIES paper); a sum of exactly 0 elects +
  count,  ///< the sign of sum_i sign(w_i delta_i), a majority vote; a tie elects +
};

struct TiesOptions {
  double density = 1.0;                      ///< fraction of each expert's entries the trim keeps (1: no trim)
  SignElection election = SignElection::sum;
  bool normalize = true;                     ///< divide by the weight of the agreeing experts (disjoint mean)
  double lambda = 1.0;                       ///< scale of the merged delta
};

namespace detail {

template <class ExecSpace, class T>
struct TiesMaskState {
  template <class U>
  using Array = typename WorkspaceCarver<ExecSpace>::template Array<U>;
  Array<std::uint8_t> keep;  // [N, P]: the trim
  Array<double> weights;     // [N]
  Workspace<ExecSpace> select;

  TiesMaskState(WorkspaceCarver<ExecSpace>& carver, std::size_t experts, std::size_t params)
      : keep(carver.template take<std::uint8_t>(experts * params)),
        weights(carver.template take<double>(experts)) {
    const auto bytes = top_k_workspace_bytes<T, ExecSpace>(experts, params);
    const auto carved = carver.template take<unsigned char>(bytes);
    select = Workspace<ExecSpace>(carved.data(), carved.extent(0));
  }
};

}  // namespace detail

/// Bytes of workspace ties_mask needs for `experts` deltas of `params` entries of type Scalar.
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
std::size_t ties_mask_workspace_bytes(std::size_t experts, std::size_t params) {
  detail::WorkspaceCarver<ExecSpace> carver;
  detail::TiesMaskState<ExecSpace, Scalar>(carver, experts, params);
  return carver.bytes();
}

/// factor[i, p] for the deltas tau [N, P] (expert i minus the base): lambda * [entry kept by the trim and its
/// weighted sign agrees with the elected one] / (normalize ? sum of the agreeing experts' weights, or 1 if none
/// : 1). `weights` holds one weight per expert (mergekit's per-model `weight`).
template <class ExecSpace, MatrixOn<ExecSpace> Deltas, MatrixOn<ExecSpace> Factor>
  requires MutableMatrix<Factor> && std::same_as<typename Deltas::non_const_value_type, typename Factor::value_type> &&
           std::floating_point<typename Factor::value_type>
void ties_mask(const ExecSpace& space, const Deltas& deltas, std::span<const double> weights, const TiesOptions& options,
               const Factor& factor, const Workspace<ExecSpace>& workspace) {
  using T = typename Factor::value_type;
  constexpr const char* fn = "camex::ties_mask";
  detail::require_nonempty(fn, "deltas", deltas, "[N, P] stack of expert deltas");
  const std::size_t experts = deltas.extent(0), params = deltas.extent(1);
  detail::require_shape(fn, "factor", factor, experts, params, "[N, P], the shape of deltas");
  detail::require_disjoint(fn, "factor", factor, "deltas", deltas);
  if (weights.size() != experts)
    throw argument_error(fn, "weights", detail::concat("one weight per expert (", experts, ')'),
                         detail::concat(weights.size(), " weights"));
  for (std::size_t i = 0; i < experts; ++i)
    if (!std::isfinite(weights[i]))
      throw argument_error(fn, "weights", "finite weights", detail::concat("weights[", i, "] = ", weights[i]));
  if (!std::isfinite(options.lambda))
    throw argument_error(fn, "options.lambda", "a finite scale", detail::concat(options.lambda));
  const std::size_t k = top_k_count(fn, options.density, params);

  detail::WorkspaceCarver<ExecSpace> carver(fn, workspace);
  const detail::TiesMaskState<ExecSpace, T> st(carver, experts, params);
  Kokkos::deep_copy(space, st.weights,
                    Kokkos::View<const double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(
                        weights.data(), experts));
  const Kokkos::View<std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space,
                     Kokkos::MemoryTraits<Kokkos::Unmanaged>>
      keep(st.keep.data(), experts, params);
  if (k < params)
    top_k_by_magnitude(space, deltas, k, keep, st.select);
  else
    Kokkos::deep_copy(space, keep, std::uint8_t{1});

  const auto w = st.weights;
  const bool by_sum = options.election == SignElection::sum, normalize = options.normalize;
  const double lambda = options.lambda;
  const int n = static_cast<int>(experts);
  Kokkos::parallel_for("camex::ties_mask", Kokkos::RangePolicy<ExecSpace>(space, 0, params), KOKKOS_LAMBDA(std::size_t p) {
    // sign(x) as -1, 0, +1; the weighted delta of a trimmed entry is 0 and so never agrees.
    const auto sign = [](double x) { return (x > 0) - (x < 0); };
    double sum = 0;
    int votes = 0;
    for (int i = 0; i < n; ++i) {
      const double d = keep(i, p) ? w(i) * static_cast<double>(deltas(i, p)) : 0.0;
      sum += d;
      votes += sign(d);
    }
    const int elected = (by_sum ? sum >= 0 : votes >= 0) ? 1 : -1;
    double agreeing = 0;
    for (int i = 0; i < n; ++i) {
      const double d = keep(i, p) ? w(i) * static_cast<double>(deltas(i, p)) : 0.0;
      agreeing += sign(d) == elected ? w(i) : 0.0;
    }
    const double scale = lambda / (normalize && agreeing != 0 ? agreeing : 1.0);
    for (int i = 0; i < n; ++i) {
      const double d = keep(i, p) ? w(i) * static_cast<double>(deltas(i, p)) : 0.0;
      factor(i, p) = static_cast<T>(sign(d) == elected ? scale : 0.0);
    }
  });
}

}  // namespace camex
