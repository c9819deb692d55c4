#pragma once
// mergekit's task-arithmetic family by its own names, knobs and defaults: one call merges a base and a list of
// models as mergekit's `task_arithmetic`, `ties`, `dare_linear` and `dare_ties` do. Each is a composed policy run
// for one routing group whose scores are the models' weights, so the weights are stated once:
//
//   task_arithmetic  Domain's composition:            base + lambda sum_i w_i tau_i / D
//   ties             Ties, trim to each density:      base + lambda sum_i w_i f_i .* tau_i
//   dare_linear      Dare, per-element draws:         base + lambda sum_i w_i f_i .* tau_i / D
//   dare_ties        DareTies (DARE, then TIES):      base + lambda sum_i w_i f2_i .* (f1_i .* tau_i)
//
// with D = sum_i w_i (1 where |D| < 1e-8) when `normalize`, else 1; TIES's disjoint mean divides inside f. The
// defaults are mergekit's: normalize on for ties only, rescale on for the DARE methods (the L1 rescale), lambda 1,
// density 1. docs/policies/mergekit.md says when the results agree with mergekit's (to the dtype's rounding, never
// bit for bit), and where camex is the more exact of the two.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/merge/dare.hpp"
#include "camex/merge/dare_ties.hpp"
#include "camex/merge/domain.hpp"
#include "camex/merge/ties.hpp"

namespace camex::mergekit {

/// One model's `parameters:` in a mergekit configuration.
struct Model {
  std::optional<double> weight{};  ///< required, as in mergekit
  double density = 1.0;          ///< fraction kept: by magnitude (ties), at random (dare_*); in (0, 1]
};

/// The method-wide `parameters:`.
struct Options {
  std::optional<bool> normalize{};  ///< unset: the method's default (ties: true; the others: false)
  double lambda = 1.0;            ///< scale of the merged delta
  std::optional<bool> rescale{};    ///< DARE methods only; unset: true (mergekit's L1 rescale)
  std::uint64_t seed = 0;         ///< the DARE draws' key: camex's CounterRng, not torch's generator
  std::uint32_t stream = 0;       ///< the draw stream (StepContext::stream): give every tensor of a model its own
};

namespace detail {

enum class Method { task_arithmetic, ties, dare_linear, dare_ties };

inline const char* function_name(Method m) {
  switch (m) {
    case Method::task_arithmetic: return "camex::mergekit::task_arithmetic";
    case Method::ties: return "camex::mergekit::ties";
    case Method::dare_linear: return "camex::mergekit::dare_linear";
    case Method::dare_ties: return "camex::mergekit::dare_ties";
  }
  return "camex::mergekit";
}

/// The checked settings of one call: each model's weight and density, normalize and rescale resolved.
struct Settings {
  std::vector<double> weights, densities;
  bool normalize, rescale;
  double lambda;
};

inline Settings resolve(Method method, std::span<const Model> models, const Options& options, std::size_t n) {
  const char* fn = function_name(method);
  const bool dare = method == Method::dare_linear || method == Method::dare_ties;
  if (models.size() != n)
    throw argument_error(fn, "models", camex::concat("one entry per row of `tensors` (", n, ")"),
                         camex::concat(models.size(), " entries"));
  Settings s{{}, {}, options.normalize.value_or(method == Method::ties), options.rescale.value_or(true), options.lambda};
  for (std::size_t i = 0; i < n; ++i) {
    const Model& m = models[i];
    const std::string at = camex::concat("models[", i, "]");
    if (!m.weight)
      throw argument_error(fn, (at + ".weight").c_str(), "a weight (mergekit requires one for every model)", "none");
    if (!std::isfinite(*m.weight))
      throw argument_error(fn, (at + ".weight").c_str(), "a finite weight", camex::concat(*m.weight));
    if (!(m.density > 0 && m.density <= 1))
      throw argument_error(fn, (at + ".density").c_str(), "a fraction in (0, 1]", camex::concat(m.density));
    if (method == Method::task_arithmetic && m.density != 1)
      throw argument_error(fn, (at + ".density").c_str(), "1 (task_arithmetic keeps every entry; use ties or dare_linear)",
                           camex::concat(m.density));
    s.weights.push_back(*m.weight);
    s.densities.push_back(m.density);
  }
  if (!std::isfinite(options.lambda))
    throw argument_error(fn, "options.lambda", "a finite scale", camex::concat(options.lambda));
  if (!dare && options.rescale.value_or(false))
    throw argument_error(fn, "options.rescale",
                         method == Method::ties
                             ? "false or unset (camex does not L1-rescale the magnitude trim; mergekit's ties default is false)"
                             : "false or unset (task_arithmetic drops nothing to rescale)",
                         "true");
  return s;
}

/// The routing scores of the one group: the weights, divided by their sum (1 where below 1e-8 in magnitude) when
/// normalising a method without sign election.
inline std::vector<double> scores(Method method, const Settings& s) {
  std::vector<double> out = s.weights;
  if (s.normalize && (method == Method::task_arithmetic || method == Method::dare_linear)) {
    double sum = 0;
    for (const double w : s.weights) sum += w;
    if (std::abs(sum) >= 1e-8)
      for (double& w : out) w /= sum;
  }
  return out;
}

inline DareMask dare_mask(const Settings& s) {
  std::vector<double> drops;
  for (const double d : s.densities) drops.push_back(1.0 - d);
  return {.drops = drops, .rescale = s.rescale ? DareRescale::l1_norm : DareRescale::none, .in_eval = true};
}

/// Runs the policy for one group; a policy's complaint about its `experts` is reported as one about `tensors`.
template <class Policy, class ExecSpace, class Base, class Tensors, class Merged>
void run(const char* fn, Policy& policy, const ExecSpace& space, const StepContext& step, const Base& base,
         const Tensors& tensors, const std::vector<double>& weights, const Merged& merged) {
  using T = typename Merged::value_type;
  const auto workspace = make_workspace<ExecSpace>(policy.workspace_bytes());
  Matrix<T, ExecSpace> scores("camex::mergekit::scores", 1, weights.size());
  const auto host = Kokkos::create_mirror_view(scores);
  for (std::size_t i = 0; i < weights.size(); ++i) host(0, i) = static_cast<T>(weights[i]);
  Kokkos::deep_copy(space, scores, host);
  try {
    policy.prepare(space, step, tensors, base, workspace);
  } catch (const argument_error& e) {
    if (e.argument() != "experts") throw;
    std::string given = e.given();
    if (given.rfind("experts(", 0) == 0) given.replace(0, 7, "tensors");
    throw argument_error(fn, "tensors", e.expected(), given);
  }
  policy.merge(space, scores, merged, workspace);
  space.fence();
}

template <class ExecSpace, class Base, class Tensors, class Merged>
void merge(Method method, const ExecSpace& space, const Base& base, const Tensors& tensors,
           std::span<const Model> models, const Options& options, const Merged& merged) {
  using T = typename Merged::value_type;
  const char* fn = function_name(method);
  camex::require_nonempty(fn, "tensors", tensors, "[n, P]: one row per model");
  const std::size_t n = tensors.extent(0), params = tensors.extent(1);
  camex::require_shape(fn, "base", base, 1, params, "[1, P] with P = tensors.extent(1)");
  camex::require_shape(fn, "merged", merged, 1, params, "[1, P] with P = tensors.extent(1)");
  const Settings s = resolve(method, models, options, n);
  const MergeProblem problem{.experts = n, .groups = 1, .shape = {1, params}};
  const MergeOptions merge{.alpha = s.lambda, .on_degenerate = DegenerateBase::accept};
  const StepContext step{.seed = options.seed, .step = 0, .stream = options.stream, .training = false};
  const auto w = scores(method, s);
  const TiesOptions election{.normalize = s.normalize};
  switch (method) {
    case Method::task_arithmetic: {
      Domain<T, ExecSpace> policy(problem, merge);
      run(fn, policy, space, step, base, tensors, w, merged);
      return;
    }
    case Method::ties: {
      Ties<T, ExecSpace> policy(problem, {.options = election, .election_weights = s.weights, .densities = s.densities},
                                merge);
      run(fn, policy, space, step, base, tensors, w, merged);
      return;
    }
    case Method::dare_linear: {
      Dare<T, ExecSpace> policy(problem, dare_mask(s), merge);
      run(fn, policy, space, step, base, tensors, w, merged);
      return;
    }
    case Method::dare_ties: {
      DareTies<T, ExecSpace> policy(problem, {dare_mask(s), {.options = election, .election_weights = s.weights}}, merge);
      run(fn, policy, space, step, base, tensors, w, merged);
      return;
    }
  }
}

}  // namespace detail

/// mergekit's task_arithmetic: merged = base + lambda sum_i w_i (tensors_i - base) / D. `base` and `merged` are
/// [1, P], `tensors` [n, P] (one model a row), `models` n entries. Throws argument_error for bad shapes, a missing
/// or non-finite weight, a density other than 1, rescale = true, a non-finite lambda or non-finite tensors.
template <class ExecSpace, MatrixOn<ExecSpace> Base, MatrixOn<ExecSpace> Tensors, MatrixOn<ExecSpace> Merged>
  requires MutableMatrix<Merged>
void task_arithmetic(const ExecSpace& space, const Base& base, const Tensors& tensors, std::span<const Model> models,
                     const Options& options, const Merged& merged) {
  detail::merge(detail::Method::task_arithmetic, space, base, tensors, models, options, merged);
}

/// mergekit's ties: each delta trimmed to its model's density by magnitude, signs elected by the weighted sum,
/// the agreeing weighted deltas summed and (normalize, the default) divided by their weights' sum, times lambda.
template <class ExecSpace, MatrixOn<ExecSpace> Base, MatrixOn<ExecSpace> Tensors, MatrixOn<ExecSpace> Merged>
  requires MutableMatrix<Merged>
void ties(const ExecSpace& space, const Base& base, const Tensors& tensors, std::span<const Model> models,
          const Options& options, const Merged& merged) {
  detail::merge(detail::Method::ties, space, base, tensors, models, options, merged);
}

/// mergekit's dare_linear: each delta entry kept with its model's density (camex's counter-based draws) and the
/// survivors rescaled to the delta's L1 norm (rescale, the default) or left as they are; then task arithmetic.
template <class ExecSpace, MatrixOn<ExecSpace> Base, MatrixOn<ExecSpace> Tensors, MatrixOn<ExecSpace> Merged>
  requires MutableMatrix<Merged>
void dare_linear(const ExecSpace& space, const Base& base, const Tensors& tensors, std::span<const Model> models,
                 const Options& options, const Merged& merged) {
  detail::merge(detail::Method::dare_linear, space, base, tensors, models, options, merged);
}

/// mergekit's dare_ties: DARE's drop and rescale, then TIES's sign election over the survivors (normalize off by
/// default).
template <class ExecSpace, MatrixOn<ExecSpace> Base, MatrixOn<ExecSpace> Tensors, MatrixOn<ExecSpace> Merged>
  requires MutableMatrix<Merged>
void dare_ties(const ExecSpace& space, const Base& base, const Tensors& tensors, std::span<const Model> models,
               const Options& options, const Merged& merged) {
  detail::merge(detail::Method::dare_ties, space, base, tensors, models, options, merged);
}

}  // namespace camex::mergekit
