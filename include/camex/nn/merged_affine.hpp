#pragma once
// One merged affine map applied per routing group: y_g = X_g W_gᵀ + b_g, with W_g [O, I] and b_g [O] the merges of
// n experts by a policy with group g's scores, and X_g the T consecutive token rows of group g. The building block
// of the merged layers (nn/): a merged linear is one of these behind a router, a merged FFN two with an activation
// between them, all sharing one routing distribution.
//
// The weights are evaluated in the order nn/evaluation_order.hpp picks: merged per group then applied, or (for a
// RowCombinationPolicy) the policy's prepared rows applied to every token and mixed by its coefficients, which
// never forms a per-group weight. Biases are always merged: G x O numbers.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/kernels/gemm.hpp"
#include "camex/kernels/row_spans.hpp"
#include "camex/merge/concepts.hpp"
#include "camex/merge/row_combination_policy.hpp"
#include "camex/nn/evaluation_order.hpp"
#include "camex/nn/expert_tensors.hpp"
#include "camex/nn/named_tensors.hpp"
#include "camex/platform/vectorize.hpp"

namespace camex {

namespace detail {

// The kernels of MergedAffine that are not GEMMs. Token t belongs to routing group t / group_length.

/// y[t, o] = sum_j coef[g(t), j] applied[t, j O + o]: every prepared row's output mixed by the group's coefficients.
template <class ExecSpace, class Coefficients, class Applied, class Y>
void mix_applied_rows(const ExecSpace& space, const Coefficients& coef, const Applied& applied, std::size_t group_length,
                      const Y& y) {
  using Scalar = typename Y::value_type;
  const std::size_t o_count = y.extent(1), m = coef.extent(1);
  Kokkos::parallel_for("camex::MergedAffine[mix]", Kokkos::RangePolicy<ExecSpace>(space, 0, y.extent(0) * o_count),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t t = w / o_count, o = w % o_count, g = t / group_length;
                         Scalar sum = 0;
                         for (std::size_t j = 0; j < m; ++j) sum += coef(g, j) * applied(t, j * o_count + o);
                         y(t, o) = sum;
                       });
}

/// d_coef[g, j] = sum over group g's tokens t of <d_y[t], applied[t, j O : (j + 1) O]>, summed in double.
template <class ExecSpace, class DY, class Applied, class DCoefficients>
void mixed_rows_coefficient_gradient(const ExecSpace& space, const DY& d_y, const Applied& applied, std::size_t group_length,
                                     const DCoefficients& d_coef) {
  using Scalar = typename DCoefficients::value_type;
  const std::size_t o_count = d_y.extent(1), m = d_coef.extent(1);
  Kokkos::parallel_for("camex::MergedAffine[d_coef]", Kokkos::RangePolicy<ExecSpace>(space, 0, d_coef.extent(0) * m),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t g = w / m, j = w % m;
                         double sum = 0;  // G m sums of L O terms, as the merge's backward sums its scores' gradient
                         for (std::size_t t = g * group_length; t < (g + 1) * group_length; ++t)
                           for (std::size_t o = 0; o < o_count; ++o) sum += double(d_y(t, o)) * applied(t, j * o_count + o);
                         d_coef(g, j) = static_cast<Scalar>(sum);
                       });
}

/// scaled[t, j O + o] = coef[g(t), j] d_y[t, o]: the cotangent of every prepared row's output.
template <class ExecSpace, class Coefficients, class DY, class Scaled>
void scale_by_coefficients(const ExecSpace& space, const Coefficients& coef, const DY& d_y, std::size_t group_length,
                           const Scaled& scaled) {
  const std::size_t o_count = d_y.extent(1), m = coef.extent(1);
  Kokkos::parallel_for("camex::MergedAffine[scale d_y]", Kokkos::RangePolicy<ExecSpace>(space, 0, d_y.extent(0) * m * o_count),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t t = w / (m * o_count), j = w / o_count % m, o = w % o_count;
                         scaled(t, j * o_count + o) = coef(t / group_length, j) * d_y(t, o);
                       });
}

/// y[t, :] += bias[g(t), :].
template <class ExecSpace, class Bias, class Y>
void add_group_bias(const ExecSpace& space, const Bias& bias, std::size_t group_length, const Y& y) {
  for_each_row_span(space, "camex::MergedAffine[bias]", y.extent(0), y.extent(1),
                    KOKKOS_LAMBDA(std::size_t t, std::size_t begin, std::size_t end) {
                      const std::size_t g = t / group_length;
                      CAMEX_IVDEP
                      for (std::size_t o = begin; o < end; ++o) y(t, o) += bias(g, o);
                    });
}

/// sums[g, :] = sum over group g's tokens t of d_y[t, :], t ascending: the merged bias's gradient.
template <class ExecSpace, class DY, class Sums>
void group_sums(const ExecSpace& space, const DY& d_y, std::size_t group_length, const Sums& sums) {
  for_each_row_span(space, "camex::MergedAffine[d_bias]", sums.extent(0), d_y.extent(1),
                    KOKKOS_LAMBDA(std::size_t g, std::size_t begin, std::size_t end) {
                      CAMEX_IVDEP
                      for (std::size_t o = begin; o < end; ++o) sums(g, o) = 0;
                      for (std::size_t t = g * group_length; t < (g + 1) * group_length; ++t) {
                        CAMEX_IVDEP
                        for (std::size_t o = begin; o < end; ++o) sums(g, o) += d_y(t, o);
                      }
                    });
}

/// into += from, entry by entry.
template <class ExecSpace, class From, class Into>
void add_matrix(const ExecSpace& space, const From& from, const Into& into) {
  for_each_row_span(space, "camex::MergedAffine[d_scores]", into.extent(0), into.extent(1),
                    KOKKOS_LAMBDA(std::size_t r, std::size_t begin, std::size_t end) {
                      CAMEX_IVDEP
                      for (std::size_t c = begin; c < end; ++c) into(r, c) += from(r, c);
                    });
}

template <MergePolicy Policy>
class MergedAffine {
 public:
  using Scalar = typename Policy::scalar_type;
  using ExecSpace = typename Policy::execution_space;
  using In = ConstMatrix<Scalar, ExecSpace>;
  using Out = Matrix<Scalar, ExecSpace>;
  template <class U>
  using Buffer = typename WorkspaceCarver<ExecSpace>::template Matrix<U>;
  /// The weights' policy draws from the first streams, the bias's from the next (the same count, bias or not).
  static constexpr std::uint32_t random_streams = 2 * random_streams_of<Policy>;

  /// `weights` merges [O, I] weights, `bias` (null: none) [O, 1] biases, for `groups` groups of `group_length`
  /// tokens and `experts` experts, evaluated in the order `options` picks; `fn` and the names label the errors.
  MergedAffine(const char* fn, const char* weight_name, const char* bias_name, Policy& weights, Policy* bias,
               std::size_t experts, std::size_t groups, std::size_t group_length, const EvaluationOptions& options)
      : weights_(weights), bias_(bias), groups_(groups), group_length_(group_length) {
    const MergeProblem& w = weights.problem();
    if (w.experts != experts)
      throw argument_error(fn, weight_name, concat("a problem over the router's ", experts, " experts"),
                           concat(w.experts, " experts"));
    if (w.groups < groups)
      throw argument_error(fn, weight_name, concat("a problem for at least layout.groups() = ", groups, " groups"),
                           concat(w.groups, " groups"));
    if (bias) {
      const MergeProblem& b = bias->problem();
      if (b.experts != w.experts || b.groups < groups || b.shape != TensorShape{w.shape.rows, 1})
        throw argument_error(fn, bias_name,
                             concat("a problem over ", w.experts, " experts, >= ", groups, " groups, shape [",
                                    w.shape.rows, ", 1]"),
                             concat(b.experts, " experts, ", b.groups, " groups, shape [", b.shape.rows, ", ",
                                    b.shape.cols, ']'));
    }
    if (!(options.flops_per_byte > 0) || !std::isfinite(options.flops_per_byte))
      throw argument_error(fn, "options.flops_per_byte", "a positive finite machine balance", concat(options.flops_per_byte));
    if constexpr (RowCombinationPolicy<Policy>) {
      order_ = choose_order(options, shape());
    } else {
      if (options.order == EvaluationOrder::apply_then_mix)
        throw argument_error(fn, "options.order",
                             "merge_then_apply or automatic (apply_then_mix needs a RowCombinationPolicy, which exposes "
                             "its prepared rows and coefficients)",
                             "apply_then_mix");
      order_ = EvaluationOrder::merge_then_apply;
    }
  }

  std::size_t outputs() const { return weights_.problem().shape.rows; }
  std::size_t inputs() const { return weights_.problem().shape.cols; }
  std::size_t experts() const { return weights_.problem().experts; }
  bool has_bias() const { return bias_ != nullptr; }
  /// The order this map evaluates its weights in (never automatic).
  EvaluationOrder order() const { return order_; }

  /// The sizes the evaluation cost depends on.
  AffineShape shape() const {
    std::size_t rows = experts();
    if constexpr (RowCombinationPolicy<Policy>) rows = weights_.row_count();
    return {.tokens = groups_ * group_length_, .groups = groups_, .rows = rows, .outputs = outputs(), .inputs = inputs(),
            .scalar_bytes = sizeof(Scalar)};
  }

  /// What lives from forward to backward, then scratch, carved in a fixed order.
  /// merge_then_apply carves merged_weights and d_merged_weights [G, P]; apply_then_mix carves applied [N, m O]
  /// (each token times every row; reused for the scaled d_y in backward), d_rows [m, P] and d_coef [G, m].
  struct Buffers {
    Buffer<Scalar> merged_weights, d_merged_weights, applied, d_rows, d_coef;
    Buffer<Scalar> merged_bias, d_merged_bias, d_scores_bias;
    Workspace<ExecSpace> weight_policy, bias_policy;
  };

  Buffers carve(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = groups_, n = experts(), in = inputs(), out = outputs();
    const bool merging = order_ == EvaluationOrder::merge_then_apply;
    const std::size_t m = shape().rows;
    Buffers b;
    b.merged_weights = carver.template take_matrix<Scalar>(merging ? g : 0, out * in);
    b.d_merged_weights = carver.template take_matrix<Scalar>(merging ? g : 0, out * in);
    b.applied = carver.template take_matrix<Scalar>(merging ? 0 : g * group_length_, m * out);
    b.d_rows = carver.template take_matrix<Scalar>(merging ? 0 : m, out * in);
    b.d_coef = carver.template take_matrix<Scalar>(merging ? 0 : g, m);
    b.merged_bias = carver.template take_matrix<Scalar>(bias_ ? g : 0, out);
    b.d_merged_bias = carver.template take_matrix<Scalar>(bias_ ? g : 0, out);
    b.d_scores_bias = carver.template take_matrix<Scalar>(bias_ ? g : 0, n);
    const auto sub = [&](std::size_t bytes) {
      const auto raw = carver.template take<unsigned char>(bytes);
      return Workspace<ExecSpace>(raw.data(), raw.extent(0));
    };
    b.weight_policy = sub(weights_.workspace_bytes());
    b.bias_policy = sub(bias_ ? bias_->workspace_bytes() : 0);
    return b;
  }

  /// Throws unless the bias operand matches the layer (present exactly when there is a bias policy).
  template <class Optional>
  void require_bias_operand(const char* fn, const char* name, const Optional& operand) const {
    if (bias_ && !operand) throw argument_error(fn, name, "the bias tensors (the layer has a bias policy)", "none");
    if (!bias_ && operand) throw argument_error(fn, name, "none (the layer has no bias policy)", "bias tensors");
  }

  /// Prepares this step's W_g (drawing from the first of its streams) and b_g (from the second), merged with `scores` [G, n],
  /// then y = X_g W_gᵀ + b_g for the groups of group_length consecutive rows of x.
  void forward(const ExecSpace& space, const StepContext& step, const In& scores, const In& x,
               const ExpertTensors<Scalar, ExecSpace>& weights, const std::optional<ExpertTensors<Scalar, ExecSpace>>& bias,
               const Out& y, const Buffers& b) {
    weights_.prepare(space, step, weights.experts, weights.base, b.weight_policy);
    if constexpr (RowCombinationPolicy<Policy>) {
      if (order_ == EvaluationOrder::apply_then_mix) apply_rows(space, scores, x, y, b);
    }
    if (order_ == EvaluationOrder::merge_then_apply) {
      weights_.merge(space, scores, b.merged_weights, b.weight_policy);
      const int out = static_cast<int>(outputs()), in = static_cast<int>(inputs());
      const auto rows = static_cast<std::ptrdiff_t>(group_length_);
      gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::no, .transpose_b = Transpose::yes, .m = static_cast<int>(group_length_),
                                    .n = out, .k = in, .alpha = 1, .a = x.data(), .lda = row_stride(x),
                                    .stride_a = rows * row_stride(x), .b = b.merged_weights.data(), .ldb = in,
                                    .stride_b = static_cast<std::ptrdiff_t>(out) * in, .beta = 0, .c = y.data(),
                                    .ldc = row_stride(y), .stride_c = rows * row_stride(y), .batch = static_cast<int>(scores.extent(0))});
    }
    if (!bias_) return;
    bias_->prepare(space, step.substream(random_streams_of<Policy>), bias->experts, bias->base, b.bias_policy);
    bias_->merge(space, scores, b.merged_bias, b.bias_policy);
    add_group_bias(space, b.merged_bias, group_length_, y);
  }

  /// d_x = d_Y_g W_g (overwritten), d_scores [G, n] (overwritten: weights' and bias's parts), and the experts',
  /// bases' and policies' parameter gradients, for the last forward with these buffers.
  void backward(const ExecSpace& space, const In& scores, const In& x, const In& d_y, const Out& d_x,
                const Out& d_scores, const ExpertGradients<Scalar, ExecSpace>& d_weights,
                const std::optional<ExpertGradients<Scalar, ExecSpace>>& d_bias, const Buffers& b) {
    const int groups = static_cast<int>(scores.extent(0));
    if constexpr (RowCombinationPolicy<Policy>) {
      if (order_ == EvaluationOrder::apply_then_mix) apply_rows_backward(space, scores, x, d_y, d_x, d_scores, d_weights, b);
    }
    if (order_ == EvaluationOrder::merge_then_apply) {
      const int out = static_cast<int>(outputs()), in = static_cast<int>(inputs());
      const auto rows = static_cast<std::ptrdiff_t>(group_length_);
      gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::yes, .transpose_b = Transpose::no, .m = out, .n = in,
                                    .k = static_cast<int>(group_length_), .alpha = 1, .a = d_y.data(), .lda = row_stride(d_y),
                                    .stride_a = rows * row_stride(d_y), .b = x.data(), .ldb = row_stride(x),
                                    .stride_b = rows * row_stride(x), .beta = 0, .c = b.d_merged_weights.data(), .ldc = in,
                                    .stride_c = static_cast<std::ptrdiff_t>(out) * in, .batch = groups});
      gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::no, .transpose_b = Transpose::no, .m = static_cast<int>(group_length_),
                                    .n = in, .k = out, .alpha = 1, .a = d_y.data(), .lda = row_stride(d_y),
                                    .stride_a = rows * row_stride(d_y), .b = b.merged_weights.data(), .ldb = in,
                                    .stride_b = static_cast<std::ptrdiff_t>(out) * in, .beta = 0, .c = d_x.data(),
                                    .ldc = row_stride(d_x), .stride_c = rows * row_stride(d_x), .batch = groups});
      weights_.backward(space, scores, b.d_merged_weights, d_scores, d_weights.experts, d_weights.base, b.weight_policy);
    }
    if (!bias_) return;
    const auto d_merged_bias = Kokkos::subview(b.d_merged_bias, std::pair<std::size_t, std::size_t>(0, groups), Kokkos::ALL);
    group_sums(space, d_y, group_length_, d_merged_bias);
    bias_->backward(space, scores, d_merged_bias, b.d_scores_bias, d_bias->experts, d_bias->base, b.bias_policy);
    add_matrix(space, b.d_scores_bias, d_scores);
  }

  /// Names the weights' tensors into `named`: `weight_prefix` + "experts" [n, O, I] and + "base" [O, I] (where the
  /// policy has a base) over the model's `weights`, then the weights' policy's parameters under the same prefix;
  /// likewise the bias's ([n, O], [O]) under `bias_prefix`. `fn` and the argument names label the errors.
  void name_tensors(const char* fn, const char* weight_name, const char* bias_name, const std::string& weight_prefix,
                    const std::string& bias_prefix, const ExpertStorage<Scalar, ExecSpace>& weights,
                    const std::optional<ExpertStorage<Scalar, ExecSpace>>& bias, NamedTensors<Scalar, ExecSpace>& named) {
    require_bias_operand(fn, bias_name, bias);
    name_merged(fn, weight_name, weight_prefix, weights_, weights, {outputs(), inputs()}, named);
    if (bias_) name_merged(fn, bias_name, bias_prefix, *bias_, *bias, {outputs()}, named);
  }

 private:
  static void name_merged(const char* fn, const char* argument, const std::string& prefix, Policy& policy,
                          const ExpertStorage<Scalar, ExecSpace>& storage, const std::vector<std::size_t>& shape,
                          NamedTensors<Scalar, ExecSpace>& named) {
    const MergeProblem& problem = policy.problem();
    const std::size_t params = problem.shape.params();
    require_shape(fn, concat(argument, ".experts").c_str(), storage.experts, problem.experts, params,
                  "[n, P] (the policy's experts and tensor size)");
    require_base_operand(fn, concat(argument, ".base").c_str(), storage.base, policy.base_source(), params);
    std::vector<std::size_t> experts_shape{problem.experts};
    experts_shape.insert(experts_shape.end(), shape.begin(), shape.end());
    named.add_matrix(prefix + "experts", experts_shape, storage.experts);
    if (storage.base.size() != 0) named.add_matrix(prefix + "base", shape, storage.base);
    named.add_parameters(prefix, policy.parameters());
  }

  /// apply_then_mix: A_j = X R_jᵀ for every prepared row j into `applied` [N, m O], then
  /// y_t = sum_j C[g(t), j] A_j[t].
  void apply_rows(const ExecSpace& space, const In& scores, const In& x, const Out& y, const Buffers& b)
    requires RowCombinationPolicy<Policy>
  {
    const auto rows = weights_.prepared_rows(space, b.weight_policy);
    const auto coef = weights_.coefficients(space, scores, b.weight_policy);
    const int out = static_cast<int>(outputs()), in = static_cast<int>(inputs()), m = static_cast<int>(rows.extent(0));
    const int tokens = static_cast<int>(x.extent(0));
    gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::no, .transpose_b = Transpose::yes, .m = tokens, .n = out, .k = in,
                                  .alpha = 1, .a = x.data(), .lda = row_stride(x), .stride_a = 0, .b = rows.data(), .ldb = in,
                                  .stride_b = row_stride(rows), .beta = 0, .c = b.applied.data(), .ldc = m * out,
                                  .stride_c = out, .batch = m});
    mix_applied_rows(space, coef, b.applied, group_length_, y);
  }

  /// apply_then_mix backward: dL/dC[g, j] = sum over group g's tokens of <d_y_t, A_j[t]>; then `applied` is
  /// overwritten by D_j[t] = C[g(t), j] d_y_t, so d_x = sum_j D_j R_j and dL/dR_j = D_jᵀ X; the policy takes it
  /// from there.
  void apply_rows_backward(const ExecSpace& space, const In& scores, const In& x, const In& d_y, const Out& d_x,
                           const Out& d_scores, const ExpertGradients<Scalar, ExecSpace>& d_weights, const Buffers& b)
    requires RowCombinationPolicy<Policy>
  {
    const auto rows = weights_.prepared_rows(space, b.weight_policy);
    const auto coef = weights_.coefficients(space, scores, b.weight_policy);
    const int out = static_cast<int>(outputs()), in = static_cast<int>(inputs()), m = static_cast<int>(rows.extent(0));
    const int tokens = static_cast<int>(x.extent(0));
    const auto d_coef = Kokkos::subview(b.d_coef, std::pair<std::size_t, std::size_t>(0, scores.extent(0)), Kokkos::ALL);
    mixed_rows_coefficient_gradient(space, d_y, b.applied, group_length_, d_coef);
    scale_by_coefficients(space, coef, d_y, group_length_, b.applied);
    for (int j = 0; j < m; ++j)
      gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::no, .transpose_b = Transpose::no, .m = tokens, .n = in, .k = out,
                                    .alpha = 1, .a = b.applied.data() + j * out, .lda = m * out, .b = rows.data() + j * row_stride(rows),
                                    .ldb = in, .beta = j == 0 ? Scalar(0) : Scalar(1), .c = d_x.data(), .ldc = row_stride(d_x)});
    gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::yes, .transpose_b = Transpose::no, .m = out, .n = in, .k = tokens,
                                  .alpha = 1, .a = b.applied.data(), .lda = m * out, .stride_a = out, .b = x.data(),
                                  .ldb = row_stride(x), .stride_b = 0, .beta = 0, .c = b.d_rows.data(), .ldc = in,
                                  .stride_c = row_stride(b.d_rows), .batch = m});
    weights_.backward_from_rows(space, scores, d_coef, b.d_rows, d_scores, d_weights.experts, d_weights.base, b.weight_policy);
  }

  Policy& weights_;
  Policy* bias_;
  std::size_t groups_, group_length_;
  EvaluationOrder order_ = EvaluationOrder::merge_then_apply;
};

}  // namespace detail
}  // namespace camex
