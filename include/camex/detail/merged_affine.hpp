#pragma once
// One merged affine map applied per routing group: y_g = X_g W_gᵀ + b_g, with W_g [O, I] and b_g [O] the merges of
// n experts by a policy with group g's scores, and X_g the T consecutive token rows of group g. The building block
// of the merged layers (nn/): a merged linear is one of these behind a router, a merged FFN two with an activation
// between them, all sharing one routing distribution.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <optional>
#include <string>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/detail/gemm.hpp"
#include "camex/merge/concepts.hpp"

namespace camex {

/// The operands of one merged tensor: experts [n, P] and base [1, P] (empty when the policy has none).
template <class Scalar, class ExecSpace>
struct ExpertTensors {
  ConstMatrix<Scalar, ExecSpace> experts;
  ConstMatrix<Scalar, ExecSpace> base;
};

/// Their gradients, same shapes.
template <class Scalar, class ExecSpace>
struct ExpertGradients {
  Matrix<Scalar, ExecSpace> experts;
  Matrix<Scalar, ExecSpace> base;
};

namespace detail {

template <MergePolicy Policy>
class MergedAffine {
 public:
  using Scalar = typename Policy::scalar_type;
  using ExecSpace = typename Policy::execution_space;
  using In = ConstMatrix<Scalar, ExecSpace>;
  using Out = Matrix<Scalar, ExecSpace>;
  template <class U>
  using Buffer = typename WorkspaceCarver<ExecSpace>::template Matrix<U>;

  /// `weights` merges [O, I] weights, `bias` (null: none) [O, 1] biases, for `groups` groups of `experts`
  /// experts; `fn` and the two names label the errors.
  MergedAffine(const char* fn, const char* weight_name, const char* bias_name, Policy& weights, Policy* bias,
               std::size_t experts, std::size_t groups)
      : weights_(weights), bias_(bias), groups_(groups) {
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
  }

  std::size_t outputs() const { return weights_.problem().shape.rows; }
  std::size_t inputs() const { return weights_.problem().shape.cols; }
  std::size_t experts() const { return weights_.problem().experts; }
  bool has_bias() const { return bias_ != nullptr; }

  /// What lives from forward to backward, then scratch, carved in a fixed order.
  struct Buffers {
    Buffer<Scalar> merged_weights, d_merged_weights, merged_bias, d_merged_bias, d_scores_bias;
    Workspace<ExecSpace> weight_policy, bias_policy;
  };

  Buffers carve(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = groups_, n = experts(), in = inputs(), out = outputs();
    Buffers b;
    b.merged_weights = carver.template take_matrix<Scalar>(g, out * in);
    b.d_merged_weights = carver.template take_matrix<Scalar>(g, out * in);
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

  /// Prepares and merges this step's W_g (drawing at step.tensor) and b_g (at step.tensor + 1) with `scores`
  /// [G, n], then y = X_g W_gᵀ + b_g for the groups of `per` consecutive rows of x.
  void forward(const ExecSpace& space, const StepContext& step, const In& scores, const In& x, std::size_t per,
               const ExpertTensors<Scalar, ExecSpace>& weights, const std::optional<ExpertTensors<Scalar, ExecSpace>>& bias,
               const Out& y, const Buffers& b) {
    weights_.prepare(space, step, weights.experts, weights.base, b.weight_policy);
    weights_.merge(space, scores, b.merged_weights, b.weight_policy);
    const int out = static_cast<int>(outputs()), in = static_cast<int>(inputs());
    const auto rows = static_cast<std::ptrdiff_t>(per);
    gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::no, .transpose_b = Transpose::yes, .m = static_cast<int>(per),
                                  .n = out, .k = in, .alpha = 1, .a = x.data(), .lda = row_stride(x),
                                  .stride_a = rows * row_stride(x), .b = b.merged_weights.data(), .ldb = in,
                                  .stride_b = static_cast<std::ptrdiff_t>(out) * in, .beta = 0, .c = y.data(),
                                  .ldc = row_stride(y), .stride_c = rows * row_stride(y), .batch = static_cast<int>(scores.extent(0))});
    if (!bias_) return;
    StepContext bias_step = step;
    bias_step.tensor = step.tensor + 1;
    bias_->prepare(space, bias_step, bias->experts, bias->base, b.bias_policy);
    bias_->merge(space, scores, b.merged_bias, b.bias_policy);
    add_group_bias(space, b.merged_bias, per, y);
  }

  /// d_x = d_Y_g W_g (overwritten), d_scores [G, n] (overwritten: weights' and bias's parts), and the experts',
  /// bases' and policies' parameter gradients, for the last forward with these buffers.
  void backward(const ExecSpace& space, const In& scores, const In& x, std::size_t per, const In& d_y, const Out& d_x,
                const Out& d_scores, const ExpertGradients<Scalar, ExecSpace>& d_weights,
                const std::optional<ExpertGradients<Scalar, ExecSpace>>& d_bias, const Buffers& b) {
    const int out = static_cast<int>(outputs()), in = static_cast<int>(inputs()), groups = static_cast<int>(scores.extent(0));
    const auto rows = static_cast<std::ptrdiff_t>(per);
    gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::yes, .transpose_b = Transpose::no, .m = out, .n = in,
                                  .k = static_cast<int>(per), .alpha = 1, .a = d_y.data(), .lda = row_stride(d_y),
                                  .stride_a = rows * row_stride(d_y), .b = x.data(), .ldb = row_stride(x),
                                  .stride_b = rows * row_stride(x), .beta = 0, .c = b.d_merged_weights.data(), .ldc = in,
                                  .stride_c = static_cast<std::ptrdiff_t>(out) * in, .batch = groups});
    gemm(space, GemmBatch<Scalar>{.transpose_a = Transpose::no, .transpose_b = Transpose::no, .m = static_cast<int>(per),
                                  .n = in, .k = out, .alpha = 1, .a = d_y.data(), .lda = row_stride(d_y),
                                  .stride_a = rows * row_stride(d_y), .b = b.merged_weights.data(), .ldb = in,
                                  .stride_b = static_cast<std::ptrdiff_t>(out) * in, .beta = 0, .c = d_x.data(),
                                  .ldc = row_stride(d_x), .stride_c = rows * row_stride(d_x), .batch = groups});
    weights_.backward(space, scores, b.d_merged_weights, d_scores, d_weights.experts, d_weights.base, b.weight_policy);
    if (!bias_) return;
    const auto d_merged_bias = b.d_merged_bias;
    const std::size_t o_count = outputs();
    Kokkos::parallel_for("camex::MergedAffine[d_bias]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * o_count),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const std::size_t g = w / o_count, o = w % o_count;
                           Scalar sum = 0;
                           for (std::size_t t = g * per; t < (g + 1) * per; ++t) sum += d_y(t, o);
                           d_merged_bias(g, o) = sum;
                         });
    bias_->backward(space, scores, d_merged_bias, b.d_scores_bias, d_bias->experts, d_bias->base, b.bias_policy);
    const auto d_scores_bias = b.d_scores_bias;
    const std::size_t n = experts();
    Kokkos::parallel_for("camex::MergedAffine[d_scores]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * n),
                         KOKKOS_LAMBDA(std::size_t w) { d_scores(w / n, w % n) += d_scores_bias(w / n, w % n); });
  }

  /// y[t, :] += bias[t / per, :].
  static void add_group_bias(const ExecSpace& space, const Buffer<Scalar>& bias, std::size_t per, const Out& y) {
    const std::size_t o_count = y.extent(1);
    Kokkos::parallel_for("camex::MergedAffine[bias]", Kokkos::RangePolicy<ExecSpace>(space, 0, y.extent(0) * o_count),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const std::size_t t = w / o_count, o = w % o_count;
                           y(t, o) += bias(t / per, o);
                         });
  }

 private:
  Policy& weights_;
  Policy* bias_;
  std::size_t groups_;
};

}  // namespace detail
}  // namespace camex
