#pragma once
// The one generic policy every built-in is an instance of (docs/policies/README.md: mask × transform × base):
//
//   merged_b = base + alpha * sum_i kappa[b, i] s[b, i] D_i,   D_i = mask_i(T_i(mask_i(tau_i))),  tau_i = E_i - base
//
// where the elementwise mask sits before or after the transform (MaskPlacement), kappa is the mask's score factor,
// and the base is absent (SMEAR), a parameter, or one of the experts. A merge is the soft merge of the rows
// R = [D_1 .. D_n, base] with coefficients C[b, i] = alpha kappa s (C[b, n] = 1 for the base row), and its
// backward is the soft-merge backward: d_R = C^T d_merged, d_C = d_merged R^T. What is left runs once per step,
// independent of the batch: d_tau from d_D through the transform and the mask, then d_E_i = d_tau_i and
// d_base = d_R[base row] - sum_i d_tau_i.
//
// Where the rows come from is the cost question (docs/performance.md). With the identity transform on a host
// space, R is never stored: the merge generates each tile of R (experts minus base, times the mask's factor) in
// L1 and combines it there, so an evaluation step reads the experts once. A training step (whose backward needs
// R), a transform (compute-bound, and read by every merge) or a device space materialises R in `prepare`. Either
// way `prepare` gathers the mask's whole-tensor statistics (the TIES trim, the L1 norms) once per step. That the
// experts and the base are finite is checked by the first pass of the step that reads them: prepare's where it
// has one, else the merge's own read; only a call that reads no operand before handing them on scans them alone.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/transfer.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/non_finite.hpp"
#include "camex/merge/axis/mask.hpp"
#include "camex/merge/axis/transform.hpp"
#include "camex/merge/concepts.hpp"
#include "camex/merge/detail/coefficients.hpp"
#include "camex/merge/detail/row_source.hpp"
#include "camex/merge/detail/step_cache.hpp"
#include "camex/merge/soft_merge.hpp"

namespace camex {

/// What to do when a policy's merge cannot depend on its base (docs/algorithms.md §4.2): alpha = 1, no mask, identity transform
/// and every routing group's scores summing to 1 give merged_b = sum_i s[b, i] E_i, whatever the base holds, and
/// the base receives zero gradient.
enum class DegenerateBase {
  reject,  ///< merge and backward throw argument_error explaining the cancellation (default)
  accept,  ///< go on: the caller knows the base is inert
};

/// The options every composed policy has beside its mask and transform: the step along the merged deltas, where the
/// base comes from, and what to do when the base cannot matter.
struct MergeOptions {
  double alpha = 1.0;                ///< step along the merged deltas
  BaseSource base = BaseSource::parameter;
  std::size_t base_expert = 0;       ///< the expert used as base when base == BaseSource::expert
  DegenerateBase on_degenerate = DegenerateBase::reject;
};

/// Extra adjoint reaching the prepared rows from outside the merge: the propagated base of dynamic merging adds
/// coefficient * d_next to every delta row and d_next to the base row (docs/algorithms.md §4.6, V_i = c dL/dP_{l+1}).
template <class Scalar, class ExecSpace>
struct UpstreamAdjoint {
  ConstMatrix<Scalar, ExecSpace> d_next;  ///< [1, P], or empty for none
  double coefficient = 0;
};

template <std::floating_point Scalar, class ExecSpace, MaskAxis<ExecSpace, Scalar> Mask,
          TransformAxis<Scalar, ExecSpace> Transform>
class ComposedPolicy {
 public:
  using scalar_type = Scalar;
  using execution_space = ExecSpace;
  using mask_type = Mask;
  using transform_type = Transform;
  static constexpr std::uint32_t random_streams = 1;  ///< the mask's draws (DARE), keyed by (stream, expert, element)

  ComposedPolicy(const char* name, const MergeProblem& problem, const MergeOptions& options, Mask mask,
                 Transform transform)
      : name_(name), problem_(problem), options_(options), mask_(std::move(mask)), transform_(std::move(transform)) {
    if (problem.experts == 0)
      throw argument_error(name_, "problem.experts", "at least one expert", "0");
    if (problem.groups == 0)
      throw argument_error(name_, "problem.groups", "room for at least one routing group per merge", "0");
    if (problem.shape.params() == 0)
      throw argument_error(name_, "problem.shape", "a non-empty tensor shape",
                           concat(problem.shape.rows, " x ", problem.shape.cols));
    if (!std::isfinite(options.alpha))
      throw argument_error(name_, "options.alpha", "a finite step", concat(options.alpha));
    if constexpr (requires { mask_.check(name, problem); }) mask_.check(name, problem);
    if (options.base == BaseSource::propagated)
      throw argument_error(name_, "options.base", "none, parameter or expert (a propagated base comes from a DynamicChain)",
                           "BaseSource::propagated");
    if (options.base == BaseSource::expert && options.base_expert >= problem.experts)
      throw argument_error(name_, "options.base_expert", concat("an expert index below ", problem.experts),
                           concat(options.base_expert));
    backward_scratch_bytes_ = most_backward_scratch(problem, row_count());
  }

  const MergeProblem& problem() const { return problem_; }
  BaseSource base_source() const { return options_.base; }
  const MergeOptions& merge_options() const { return options_; }
  /// m, the number of rows a merge combines: the n deltas, and the base where there is one.
  std::size_t row_count() const { return problem_.experts + (options_.base != BaseSource::none ? 1 : 0); }
  const Mask& mask() const { return mask_; }
  Transform& transform() { return transform_; }
  const Transform& transform() const { return transform_; }

  /// The bytes of the longest carve a call of a step makes: the backward's (the step's buffers, the soft-merge
  /// backward's scratch, the transform's scratch); every other call carves a prefix of it, or the buffers and the
  /// transform's scratch alone.
  std::size_t workspace_bytes() const {
    WorkspaceCarver<ExecSpace> carver;
    layout(carver);
    carve_backward_scratch(carver);
    if constexpr (!Transform::is_identity) transform_.template layout<Scalar>(carver);
    return carver.bytes();
  }

  std::vector<Parameter<Scalar, ExecSpace>> parameters() {
    if constexpr (Transform::is_identity)
      return {};
    else
      return transform_.parameters();
  }

  /// Gets this step ready: the mask's statistics, and the rows R where they are materialised. `experts` [n, P];
  /// `base` [1, P] with BaseSource::parameter, else empty. experts and base must hold the same values until this
  /// step's backward has run.
  void prepare(const ExecSpace& space, const StepContext& step, const ConstMatrix<Scalar, ExecSpace>& experts,
               const ConstMatrix<Scalar, ExecSpace>& base, const Workspace<ExecSpace>& workspace) {
    const std::string fn = name_ + "::prepare";
    check_operands(fn.c_str(), experts, base);
    if (pending_.queued) settle_pending(space);  // the last step's batch was never read
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    const auto buffers = layout(carver);
    step_ = step;
    experts_ = experts;
    base_ = base;
    factor_active_ = mask_.factor_active(step);
    // Non-finite experts or base are caught by the first pass over them (materialising the deltas or the rows, or
    // the merge), before anything reads that pass's output.
    cache_.begin(detail::arm_scan(space, &buffers.status.data()->first_bad_operand));
    if (!bare()) {
      if (!Transform::is_identity || (factor_active_ && mask_.needs_deltas(step))) ensure_deltas(space, buffers);
      if (factor_active_) {
        if (mask_.needs_deltas(step)) finish_scan(space);
        mask_.prepare(space, step, deltas(buffers), buffers.mask);
      }
      prepare_rows(space, buffers, carver);
    }
    cache_.end_prepare();
  }

  /// merged[b] = base + alpha sum_i kappa[b, i] scores[b, i] D_i for the B <= problem().groups rows of `scores`.
  /// Expert-level random factors are drawn per row index b: merge all groups of a step in one call.
  void merge(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
             const Matrix<Scalar, ExecSpace>& merged, const Workspace<ExecSpace>& workspace) const {
    const std::string fn = name_ + "::merge";
    check_scores(fn.c_str(), scores);
    require_shape(fn.c_str(), "merged", merged, scores.extent(0), problem_.shape.params(),
                          "[B, P] with B = scores.extent(0), P = problem().shape.params()");
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    const auto buffers = layout(carver);
    const auto coef = write_coefficients(space, scores, buffers);
    merge_rows_into(space, coef, buffers, merged, fn.c_str());
    // The operands were read by the merge if no earlier pass of the step read them: their check ends here.
    finish_scan(space, true);
    report_status(space, fn.c_str(), scores, buffers);
  }

  void backward(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                const ConstMatrix<Scalar, ExecSpace>& d_merged, const Matrix<Scalar, ExecSpace>& d_scores,
                const Matrix<Scalar, ExecSpace>& d_experts, const Matrix<Scalar, ExecSpace>& d_base,
                const Workspace<ExecSpace>& workspace) {
    backward(space, scores, d_merged, d_scores, d_experts, d_base, workspace, UpstreamAdjoint<Scalar, ExecSpace>{});
  }

  /// The backward, with an adjoint reaching the rows from a propagated base (dynamic merging).
  void backward(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                const ConstMatrix<Scalar, ExecSpace>& d_merged, const Matrix<Scalar, ExecSpace>& d_scores,
                const Matrix<Scalar, ExecSpace>& d_experts, const Matrix<Scalar, ExecSpace>& d_base,
                const Workspace<ExecSpace>& workspace, const UpstreamAdjoint<Scalar, ExecSpace>& upstream) {
    const std::string name = name_ + "::backward";
    const char* fn = name.c_str();
    check_gradient_operands(fn, scores, d_scores, d_experts, d_base);
    const std::size_t groups = scores.extent(0), params = problem_.shape.params();
    require_shape(fn, "d_merged", d_merged, groups, params, "[B, P] with B = scores.extent(0)");

    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    const auto buffers = layout(carver);
    if (!bare()) ensure_rows(space, buffers);
    finish_scan(space);  // a bare step's operands, where no merge has read them
    const auto rows = merge_rows(buffers);
    const std::size_t nrows = rows.extent(0);
    const auto coef = build_coefficients(space, fn, scores, buffers);
    const Buffer<Scalar> d_coef(buffers.d_coef.data(), groups, nrows);
    const auto backward_workspace = carve_backward_scratch(carver);
    if (bare()) {
      // The rows are the experts, so d_R is d_experts itself.
      detail::launch_soft_merge_backward(space, coef, rows, d_merged, d_coef, d_experts, backward_workspace);
      rows_backward(fn, space, d_coef, d_experts, d_scores, d_experts, d_base, upstream, buffers, carver);
      return;
    }
    detail::launch_soft_merge_backward(space, coef, rows, d_merged, d_coef, buffers.d_rows, backward_workspace);
    rows_backward(fn, space, d_coef, buffers.d_rows, d_scores, d_experts, d_base, upstream, buffers, carver);
  }

  /// The score-to-coefficient map of this step: merged = C R with R = prepared_rows(), so C [B, m] holds
  /// C[b, i] = alpha kappa[b, i] scores[b, i] and C[b, n] = 1 for the base row. The view lives in the workspace
  /// and holds until the next call given scores. Valid after prepare.
  ConstMatrix<Scalar, ExecSpace> coefficients(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                                              const Workspace<ExecSpace>& workspace) const {
    const std::string fn = name_ + "::coefficients";
    check_scores(fn.c_str(), scores);
    finish_scan(space);  // the caller applies the rows itself: the operands are checked before it reads them
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    return build_coefficients(space, fn.c_str(), scores, layout(carver));
  }

  /// The backward of merged = C R for a caller that applies the rows itself (never forming merged tensors): from
  /// d_coef = dL/dC [B, m] and d_rows = dL/dR [m, P] (overwritten: used as scratch), writes what backward writes.
  void backward_from_rows(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                          const ConstMatrix<Scalar, ExecSpace>& d_coef, const Matrix<Scalar, ExecSpace>& d_rows,
                          const Matrix<Scalar, ExecSpace>& d_scores, const Matrix<Scalar, ExecSpace>& d_experts,
                          const Matrix<Scalar, ExecSpace>& d_base, const Workspace<ExecSpace>& workspace,
                          const UpstreamAdjoint<Scalar, ExecSpace>& upstream = {}) {
    const std::string name = name_ + "::backward_from_rows";
    const char* fn = name.c_str();
    check_gradient_operands(fn, scores, d_scores, d_experts, d_base);
    require_shape(fn, "d_coef", d_coef, scores.extent(0), row_count(), "[B, m], the shape of coefficients()");
    require_shape(fn, "d_rows", d_rows, row_count(), problem_.shape.params(), "[m, P], the shape of prepared_rows()");
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    const auto buffers = layout(carver);
    if (!bare()) ensure_rows(space, buffers);
    finish_scan(space);
    rows_backward(fn, space, d_coef, d_rows, d_scores, d_experts, d_base, upstream, buffers, carver);
  }

  /// This step's elementwise mask factor f [n, P], materialised in the workspace: the masked delta is f .* tau
  /// (f .* T(tau) for a mask placed after the transform), so f is 0 where an entry was dropped, trimmed or
  /// outvoted. Valid after prepare, for a step whose mask has an elementwise factor.
  ConstMatrix<Scalar, ExecSpace> mask_factor(const ExecSpace& space, const Workspace<ExecSpace>& workspace) {
    const std::string fn = name_ + "::mask_factor";
    if (!cache_.prepared()) throw argument_error(fn.c_str(), "this", "prepare() to have run for this step", "an unprepared policy");
    if (!factor_active_)
      throw argument_error(fn.c_str(), "this", "a step whose mask has an elementwise factor",
                           "a step without one (no mask, DARE at evaluation or at expert granularity)");
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    const auto buffers = layout(carver);
    ensure_factor(space, buffers);
    finish_scan(space);
    return buffers.factor;
  }

  /// This step's deltas tau_i = E_i - base [n, P] (the experts, for a policy without a base), materialised in the
  /// workspace. Valid after prepare.
  ConstMatrix<Scalar, ExecSpace> prepared_deltas(const ExecSpace& space, const Workspace<ExecSpace>& workspace) {
    const std::string fn = name_ + "::prepared_deltas";
    if (!cache_.prepared()) throw argument_error(fn.c_str(), "this", "prepare() to have run for this step", "an unprepared policy");
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    const auto buffers = layout(carver);
    ensure_deltas(space, buffers);
    finish_scan(space);
    return deltas(buffers);
  }

  /// The mask's state of this step as it lies in the workspace (a TIES trim, DARE's L1 norms): what the mask's
  /// own accessors read. Valid after prepare.
  auto mask_state(const Workspace<ExecSpace>& workspace) const {
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    return layout(carver).mask;
  }

  /// This step's rows [D_1 .. D_n, base] (or the experts, for a bare soft merge), materialised if the merge
  /// generates them, for callers that apply them without materialising merged tensors (layers, dynamic merging).
  /// Valid after prepare.
  ConstMatrix<Scalar, ExecSpace> prepared_rows(const ExecSpace& space, const Workspace<ExecSpace>& workspace) {
    auto carver = WorkspaceCarver<ExecSpace>(name_.c_str(), workspace);
    const auto buffers = layout(carver);
    if (!bare()) ensure_rows(space, buffers);
    finish_scan(space);
    return merge_rows(buffers);
  }

 private:
  template <class T>
  using Buffer = typename WorkspaceCarver<ExecSpace>::template Matrix<T>;
  using Piece = detail::StepCache::Piece;

  using MaskState = decltype(std::declval<const Mask&>().template layout<Scalar>(
      std::declval<WorkspaceCarver<ExecSpace>&>(), std::declval<const MergeProblem&>()));

  struct Buffers {
    Buffer<Scalar> tau, factor, pre, pre_adjoint, rows, d_rows, coef, d_coef;
    MaskState mask;
    typename WorkspaceCarver<ExecSpace>::template Array<detail::StepStatus> status;  // holds the scan's cell
  };

  /// What every backward shares once dL/dC and dL/dR are known: the scores' gradient, then d_R back through the
  /// mask and the transform to the experts and the base (d_rows is overwritten on the way).
  template <class DRows>
  void rows_backward(const char* fn, const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& d_coef,
                     const DRows& d_rows, const Matrix<Scalar, ExecSpace>& d_scores,
                     const Matrix<Scalar, ExecSpace>& d_experts, const Matrix<Scalar, ExecSpace>& d_base,
                     const UpstreamAdjoint<Scalar, ExecSpace>& upstream, const Buffers& buffers,
                     WorkspaceCarver<ExecSpace>& carver) {
    detail::coefficients_backward(space, d_coef, options_.alpha, mask_.score_factor_active(step_),
                                  mask_.score_factor(step_), d_scores);
    if (bare()) {
      if (upstream.d_next.size() != 0)
        throw argument_error(fn, "upstream", "no upstream adjoint (the policy has no base to propagate)", "one");
      if (d_rows.data() != d_experts.data()) copy_matrix(space, d_experts, d_rows);
      return;
    }
    if (upstream.d_next.size() != 0) {
      require_shape(fn, "upstream.d_next", upstream.d_next, 1, problem_.shape.params(), "[1, P]");
      detail::add_upstream_adjoint(space, upstream.d_next, upstream.coefficient, problem_.experts, d_rows);
    }

    const auto d_delta = Kokkos::subview(d_rows, std::pair<std::size_t, std::size_t>(0, problem_.experts), Kokkos::ALL);
    if (factor_active_) ensure_deltas(space, buffers);
    const auto tau = deltas(buffers);
    if (factor_active_) ensure_factor(space, buffers);
    if constexpr (Transform::is_identity) {
      if (factor_active_)
        mask_.adjoint(space, step_, tau, buffers.factor, d_delta, d_experts, buffers.mask);
      else
        copy_matrix(space, d_experts, d_delta);
    } else {
      if (factor_active_ && mask_.placement() == MaskPlacement::on_transformed)
        detail::multiply_elementwise(space, buffers.factor, d_delta, d_delta);
      if (factor_active_ && mask_.placement() == MaskPlacement::on_delta) {
        transform_.backward(space, transform_input(buffers), d_delta, buffers.pre_adjoint, carver);
        mask_.adjoint(space, step_, tau, buffers.factor, buffers.pre_adjoint, d_experts, buffers.mask);
      } else {
        transform_.backward(space, transform_input(buffers), d_delta, d_experts, carver);
      }
    }
    if (options_.base != BaseSource::none)
      detail::base_gradient(space, d_rows, d_experts, options_.base == BaseSource::expert, options_.base_expert,
                            d_base.data());
  }

  /// merged = C R: the rows generated tile by tile from the operands, or read where prepare materialised them or
  /// where they are the experts. The operands' scan, if still armed, rides on that read.
  void merge_rows_into(const ExecSpace& space, const Buffer<Scalar>& coef, const Buffers& buffers,
                       const Matrix<Scalar, ExecSpace>& merged, const char* fn) const {
    if constexpr (generation_possible) {
      if (generates_rows() && !cache_.has(Piece::rows)) {
        require_operands_unchanged(fn, merged);
        const detail::Coefficients<Scalar> c{coef.data(), row_stride(coef), 1};
        if (!factor_active_ && base_row() != nullptr &&
            coef.extent(0) <= static_cast<std::size_t>(detail::rows_in_one_block<Scalar>)) {
          // Unmasked, every group in one register block: base + sum_i c_i (E_i - base) straight from the experts,
          // nothing generated, the base subtracted once per loaded vector. With more groups the generated tile is
          // cheaper: it subtracts the base once per tile, not once per block of groups (docs/performance.md).
          detail::row_combination(space, Schedule::automatic,
                                  detail::RowCombination<Scalar>{.coef = c,
                                                                 .rows = experts_.data(),
                                                                 .row_stride = row_stride(experts_),
                                                                 .in_rows = static_cast<int>(problem_.experts),
                                                                 .out = merged.data(),
                                                                 .out_stride = row_stride(merged),
                                                                 .out_rows = static_cast<int>(coef.extent(0)),
                                                                 .length = problem_.shape.params(),
                                                                 .centre = base_row(),
                                                                 .scan = cache_.pending_scan(),
                                                                 .centre_position = base_position()});
          return;
        }
        detail::generated_row_combination(space, c, delta_source(buffers, factor_active_, true, cache_.pending_scan()),
                                          merged.data(), row_stride(merged), static_cast<int>(coef.extent(0)),
                                          problem_.shape.params());
        return;
      }
    }
    // The rows are materialised (their pass checked the operands) or are the experts (checked here).
    detail::launch_soft_merge(space, coef, merge_rows(buffers), merged, cache_.pending_scan());
  }

  /// Position of the base's first entry in the operands' scan: the row after the experts for a parameter, the
  /// expert's own row for an expert base.
  std::size_t base_position() const {
    const std::size_t row = options_.base == BaseSource::expert ? options_.base_expert : problem_.experts;
    return row * problem_.shape.params();
  }

  static constexpr bool has_mask = !std::is_same_v<Mask, NoMask>;
  static constexpr bool generation_possible =
      Transform::is_identity && static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);

  /// No base, no mask, no transform: the rows are the experts themselves.
  bool bare() const { return options_.base == BaseSource::none && !has_mask && Transform::is_identity; }

  /// Whether merge generates the rows tile by tile instead of reading them from the workspace.
  bool generates_rows() const {
    return generation_possible && !bare() && detail::generated_rows_fit<Scalar>(static_cast<int>(row_count()));
  }

  /// Carves the buffers that live from prepare to backward, in a fixed order; what a call takes after them is
  /// transient scratch.
  Buffers layout(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t n = problem_.experts, params = problem_.shape.params(), groups = problem_.groups;
    const bool has_base = options_.base != BaseSource::none;
    const std::size_t nrows = row_count();
    const bool pre = !Transform::is_identity && has_mask && mask_.placement() == MaskPlacement::on_delta;
    Buffers b;
    b.tau = carver.template take_matrix<Scalar>(has_base ? n : 0, params);
    b.factor = carver.template take_matrix<Scalar>(has_mask ? n : 0, params);
    b.pre = carver.template take_matrix<Scalar>(pre ? n : 0, params);
    b.pre_adjoint = carver.template take_matrix<Scalar>(pre ? n : 0, params);
    b.rows = carver.template take_matrix<Scalar>(bare() ? 0 : nrows, params);
    b.d_rows = carver.template take_matrix<Scalar>(bare() ? 0 : nrows, params);
    b.coef = carver.template take_matrix<Scalar>(groups, nrows);
    b.d_coef = carver.template take_matrix<Scalar>(groups, nrows);
    b.mask = mask_.template layout<Scalar>(carver, problem_);
    b.status = carver.template take<detail::StepStatus>(1);
    return b;
  }

  /// The soft-merge backward's scratch, taken after the buffers; sized for any B <= problem().groups.
  Workspace<ExecSpace> carve_backward_scratch(WorkspaceCarver<ExecSpace>& carver) const {
    const auto scratch = carver.template take<unsigned char>(backward_scratch_bytes_);
    return Workspace<ExecSpace>(scratch.data(), scratch.extent(0));
  }

  /// The most scratch the soft-merge backward takes for any B <= problem().groups: its chunking, and so its bytes,
  /// need not grow with B.
  static std::size_t most_backward_scratch(const MergeProblem& problem, std::size_t rows) {
    std::size_t most = 0;
    for (std::size_t groups = 1; groups <= problem.groups; ++groups)
      most = std::max(most, soft_merge_backward_workspace_bytes<Scalar, ExecSpace>(groups, rows, problem.shape.params()));
    return most;
  }

  /// The rows [f .* tau_1 .. f .* tau_n (, base)] computed from the experts and the base wherever they are needed.
  /// `scan`, if armed, checks the deltas as they are formed.
  auto delta_source(const Buffers& b, bool masked, bool with_base_row, detail::NonFiniteScan scan = {}) const {
    return detail::DeltaRows<Scalar, decltype(mask_.element_factor(step_, b.mask))>{
        experts_.data(), row_stride(experts_), static_cast<int>(problem_.experts), base_row(),
        with_base_row && options_.base != BaseSource::none, masked, mask_.element_factor(step_, b.mask),
        scan, problem_.shape.params()};
  }

  /// What prepare leaves for the merge beyond the mask's statistics: the rows, where they are materialised.
  void prepare_rows(const ExecSpace& space, const Buffers& buffers, WorkspaceCarver<ExecSpace>& carver) {
    if constexpr (Transform::is_identity) {
      // A training step's backward materialises the rows anyway; doing it here costs nothing more, lets the
      // merge read them instead of generating them, and checks the operands inside that pass.
      if (!generates_rows() || step_.training) ensure_rows(space, buffers);
    } else {
      finish_scan(space);
      const auto d = delta_rows(buffers);
      if (factor_active_ && mask_.placement() == MaskPlacement::on_delta)
        detail::materialise_rows(space, delta_source(buffers, true, false), buffers.pre.data(),
                                 row_stride(buffers.pre), problem_.shape.params());
      transform_.apply(space, transform_input(buffers), d, carver);
      if (factor_active_ && mask_.placement() == MaskPlacement::on_transformed) {
        ensure_factor(space, buffers);
        detail::multiply_elementwise(space, buffers.factor, d, d);
      }
      if (options_.base != BaseSource::none) {
        const std::size_t n = problem_.experts, j = options_.base == BaseSource::parameter ? 0 : options_.base_expert;
        const auto base_out = Kokkos::subview(buffers.rows, std::pair<std::size_t, std::size_t>(n, n + 1), Kokkos::ALL);
        const auto base_in = Kokkos::subview(options_.base == BaseSource::parameter ? base_ : experts_,
                                             std::pair<std::size_t, std::size_t>(j, j + 1), Kokkos::ALL);
        copy_matrix(space, base_out, base_in);
      }
      cache_.mark(Piece::rows);
    }
  }

  /// Ends the scan of the operands, scanning them first unless `scanned` (a pass that read them has just run). Where
  /// the host reads the execution space's memory it reads the result and throws on a bad operand; on a device the
  /// result waits in the step's status for its one read-back (build_coefficients), and a mask that reads the deltas
  /// in the meantime works on whatever they hold, its output unread until then.
  void finish_scan(const ExecSpace& space, bool scanned = false) const {
    const auto scan = cache_.end_scan();
    if (scan && !scanned) {
      const std::size_t n = problem_.experts, params = problem_.shape.params();
      detail::scan_rows(space, scan, experts_.data(), row_stride(experts_), static_cast<int>(n), params);
      if (base_.size() != 0) detail::scan_rows(space, scan, base_.data(), 0, 1, params, n * params);
    }
    if (cache_.operands_unread() && host_memory) report_bad_operand(space, detail::first_non_finite(space, cache_.read_operands()));
  }

  /// Throws argument_error naming the operand of prepare at position `first` of [experts; base] (or of the deltas
  /// experts - base: the same places) and its value; nothing for no_position.
  void report_bad_operand(const ExecSpace& space, std::size_t first) const {
    if (first == detail::no_position) return;
    const std::string fn = name_ + "::prepare";
    const std::size_t n = problem_.experts, params = problem_.shape.params();
    const std::size_t row = first / params, p = first % params;
    const double e = row < n ? detail::read_entry(space, experts_, row, p) : 0.0;
    if (!std::isfinite(e))
      throw argument_error(fn.c_str(), "experts", "finite values", concat("experts(", row, ", ", p, ") = ", e));
    const bool from_expert = options_.base == BaseSource::expert;
    const std::size_t j = options_.base_expert;
    const double b = from_expert ? detail::read_entry(space, experts_, j, p) : detail::read_entry(space, base_, 0, p);
    if (!std::isfinite(b))
      throw argument_error(fn.c_str(), from_expert ? "experts" : "base", "finite values",
                           concat(from_expert ? "experts(" : "base(", from_expert ? j : 0, ", ", p, ") = ", b));
    throw argument_error(fn.c_str(), "experts", "experts whose differences from the base are finite",
                         concat("experts(", row, ", ", p, ") = ", e, " and base ", b, ", whose difference overflows"));
  }

  void ensure_deltas(const ExecSpace& space, const Buffers& b) {
    if (cache_.has(Piece::deltas) || options_.base == BaseSource::none) return;
    detail::materialise_rows(space, delta_source(b, false, false, cache_.pending_scan()), b.tau.data(),
                             row_stride(b.tau), problem_.shape.params());
    cache_.mark(Piece::deltas);
    finish_scan(space, true);
  }

  void ensure_factor(const ExecSpace& space, const Buffers& b) {
    if (cache_.has(Piece::factor)) return;
    ensure_deltas(space, b);
    detail::materialise_factor(space, deltas(b), mask_.element_factor(step_, b.mask), b.factor);
    cache_.mark(Piece::factor);
  }

  void ensure_rows(const ExecSpace& space, const Buffers& b) {
    if (cache_.has(Piece::rows)) return;
    detail::materialise_rows(space, delta_source(b, factor_active_, true, cache_.pending_scan()), b.rows.data(),
                             row_stride(b.rows), problem_.shape.params());
    cache_.mark(Piece::rows);
    finish_scan(space, true);
  }

  /// A merge that generates rows reads the experts and base given to prepare; it cannot write over them.
  void require_operands_unchanged(const char* fn, const Matrix<Scalar, ExecSpace>& merged) const {
    require_disjoint(fn, "merged", merged, "experts", experts_);
    if (base_.size() != 0) require_disjoint(fn, "merged", merged, "base", base_);
  }

  ConstMatrix<Scalar, ExecSpace> deltas(const Buffers& b) const {
    if (options_.base == BaseSource::none) return experts_;
    return b.tau;
  }

  ConstMatrix<Scalar, ExecSpace> transform_input(const Buffers& b) const {
    if (factor_active_ && mask_.placement() == MaskPlacement::on_delta && b.pre.size() != 0) return b.pre;
    return deltas(b);
  }

  Buffer<Scalar> delta_rows(const Buffers& b) const {
    if (b.rows.extent(0) == 0) return {};
    return Kokkos::subview(b.rows, std::pair<std::size_t, std::size_t>(0, problem_.experts), Kokkos::ALL);
  }

  ConstMatrix<Scalar, ExecSpace> merge_rows(const Buffers& b) const {
    if (b.rows.extent(0) == 0) return experts_;
    return b.rows;
  }

  const Scalar* base_row() const {
    switch (options_.base) {
      case BaseSource::parameter: return base_.data();
      case BaseSource::expert: return experts_.data() + options_.base_expert * row_stride(experts_);
      case BaseSource::none:
      case BaseSource::propagated: break;
    }
    return nullptr;
  }

  void check_operands(const char* fn, const ConstMatrix<Scalar, ExecSpace>& experts,
                      const ConstMatrix<Scalar, ExecSpace>& base) const {
    const std::size_t params = problem_.shape.params();
    require_shape(fn, "experts", experts, problem_.experts, params,
                          "[n, P] with n = problem().experts, P = problem().shape.params()");
    detail::require_base_operand(fn, "base", base, options_.base, params);
  }

  void check_scores(const char* fn, const ConstMatrix<Scalar, ExecSpace>& scores) const {
    if (!cache_.prepared()) throw argument_error(fn, "this", "prepare() to have run for this step", "an unprepared policy");
    detail::require_scores_shape(fn, scores, problem_);
  }

  /// What both backwards check: a prepared step, the scores, and the gradients every backward writes.
  void check_gradient_operands(const char* fn, const ConstMatrix<Scalar, ExecSpace>& scores,
                               const Matrix<Scalar, ExecSpace>& d_scores, const Matrix<Scalar, ExecSpace>& d_experts,
                               const Matrix<Scalar, ExecSpace>& d_base) const {
    check_scores(fn, scores);
    const std::size_t n = problem_.experts, params = problem_.shape.params();
    require_shape(fn, "d_scores", d_scores, scores.extent(0), n, "[B, n], the shape of scores");
    require_shape(fn, "d_experts", d_experts, n, params, "[n, P], the shape of experts");
    detail::require_base_operand(fn, "d_base", d_base, options_.base, params);
  }

  /// C[b, i] = alpha kappa[b, i] scores[b, i] and C[b, n] = 1, built on the execution space, then the step's status
  /// reported (report_status).
  Buffer<Scalar> build_coefficients(const ExecSpace& space, const char* fn, const ConstMatrix<Scalar, ExecSpace>& scores,
                                    const Buffers& b) const {
    const auto coef = write_coefficients(space, scores, b);
    report_status(space, fn, scores, b);
    return coef;
  }

  /// The coefficients, with the status fields of the scores written beside them on the execution space.
  Buffer<Scalar> write_coefficients(const ExecSpace& space, const ConstMatrix<Scalar, ExecSpace>& scores,
                                    const Buffers& b) const {
    const std::size_t groups = scores.extent(0), n = problem_.experts;
    const Buffer<Scalar> coef(b.coef.data(), groups, b.coef.extent(1));
    // The status cell is about to be rewritten: a check still queued for other scores is settled first.
    if (pending_.queued && !cache_.checked(scores.data(), groups, scores.extent(1))) settle_pending(space);
    detail::build_coefficients(space, scores, options_.alpha, mask_.score_factor_active(step_), mask_.score_factor(step_),
                               coef, b.status.data(), 64 * std::numeric_limits<Scalar>::epsilon() * static_cast<double>(n));
    return coef;
  }

  /// The step's status after the coefficients were written: operands of prepare still unchecked, non-finite
  /// scores and the degenerate base, read at once, or, where the step carries a read-back batch, queued on it and
  /// settled when the batch is read. On a device, or with a batch, a later call of the step given the same scores
  /// view reads nothing.
  void report_status(const ExecSpace& space, const char* fn, const ConstMatrix<Scalar, ExecSpace>& scores,
                     const Buffers& b) const {
    const std::size_t groups = scores.extent(0);
    const bool kappa = mask_.score_factor_active(step_);
    const bool same_scores = cache_.checked(scores.data(), groups, scores.extent(1));
    const bool deferring = step_.read_backs != nullptr;
    if ((deferring || !host_memory) && same_scores && !cache_.operands_unread()) return;
    const bool operands = cache_.operands_unread();
    if (operands) cache_.read_operands();
    if (deferring) {
      pending_.policy = this;
      pending_.queued = true;
      pending_.space = space;
      pending_.fn = fn;
      pending_.scores = scores;
      pending_.kappa = kappa;
      pending_.operands = operands;
      pending_.status = b.status.data();
      step_.read_backs->defer(b.status.data(), sizeof(detail::StepStatus), &settle_queued, &pending_);
    } else {
      settle_status(space, fn, scores, kappa, operands, read_back(space, b.status.data()));
    }
    cache_.remember_checked(scores.data(), groups, scores.extent(1));
  }

  /// Throws for what a step's status reports: a non-finite operand of prepare (where `operands`), a non-finite
  /// score, the degenerate base.
  void settle_status(const ExecSpace& space, const char* fn, const ConstMatrix<Scalar, ExecSpace>& scores, bool kappa,
                     bool operands, const detail::StepStatus& status) const {
    const std::size_t groups = scores.extent(0), n = problem_.experts;
    if (operands) report_bad_operand(space, status.first_bad_operand);
    if (status.first_bad_score != detail::no_position) {
      const std::size_t g = status.first_bad_score / n, i = status.first_bad_score % n;
      throw argument_error(fn, "scores", "finite routing scores",
                           concat("scores(", g, ", ", i, ") = ", detail::read_entry(space, scores, g, i)));
    }
    if (degenerate_merge_options() && !kappa && status.rows_summing_to_one == groups &&
        options_.on_degenerate == DegenerateBase::reject)
      throw argument_error(fn, "scores",
                           "scores whose rows do not all sum to 1, since with alpha = 1, no mask and no transform the "
                           "base cancels (merged = sum_i s_i E_i and the base gets no gradient); use camex::Euclidean, "
                           "change alpha, or set MergeOptions::on_degenerate = DegenerateBase::accept",
                           "every row summing to 1");
  }

  /// A status check queued on a step's read-back batch: what settling it needs.
  struct PendingCheck {
    const ComposedPolicy* policy = nullptr;
    bool queued = false;
    ExecSpace space{};
    std::string fn;
    ConstMatrix<Scalar, ExecSpace> scores;
    bool kappa = false;
    bool operands = false;
    const detail::StepStatus* status = nullptr;
  };

  static void settle_queued(void* owner, const unsigned char* value) {
    auto& pending = *static_cast<PendingCheck*>(owner);
    if (!pending.queued) return;  // settled early, before its cell was rewritten
    pending.queued = false;
    if (value == nullptr) return;  // discarded with its step
    detail::StepStatus status;
    std::memcpy(&status, value, sizeof status);
    pending.policy->settle_status(pending.space, pending.fn.c_str(), pending.scores, pending.kappa, pending.operands, status);
  }

  /// Settles the queued check now, with a read-back of its own: its cell is needed again before the batch is read.
  void settle_pending(const ExecSpace& space) const {
    pending_.queued = false;
    settle_status(space, pending_.fn.c_str(), pending_.scores, pending_.kappa, pending_.operands,
                  read_back(space, pending_.status));
  }

  bool degenerate_merge_options() const {
    return options_.base != BaseSource::none && !has_mask && Transform::is_identity && options_.alpha == 1.0;
  }

  std::string name_;
  MergeProblem problem_;
  MergeOptions options_;
  Mask mask_;
  Transform transform_;
  std::size_t backward_scratch_bytes_ = 0;
  StepContext step_{};
  bool factor_active_ = false;
  static constexpr bool host_memory =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename ExecSpace::memory_space>::accessible;
  // Mutable: a merge (const) reads the status back, or queues it, and so settles the step's checks.
  mutable detail::StepCache cache_;
  mutable PendingCheck pending_;
  ConstMatrix<Scalar, ExecSpace> experts_, base_;
};

}  // namespace camex
