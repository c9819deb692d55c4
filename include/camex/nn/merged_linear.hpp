#pragma once
// The CAMEx merged linear layer (spec §3, §9): y_t = W_g x_t + b_g for every token t of routing group g, where
// W_g and b_g are the merges, with group g's router scores, of the layer's n expert weights [O, I] and biases [O]
// around their bases, by any merge policy (merge/concepts.hpp), and the scores come from any router
// (route/concepts.hpp) on the group's routing input (route/groups.hpp).
//
// The layer holds no tensors of its own: experts, bases and the policies' and router's parameters belong to the
// model; forward takes the operands, backward writes their gradients. One call per step:
//
//   bytes = layer.workspace_bytes()
//   aux   = layer.forward(space, step, x, padding, weights, bias, y, ws)       x [S·L, I] -> y [S·L, O]
//   layer.backward(space, d_y, d_aux, d_x, d_weights, d_bias, ws)
//
// Evaluation order: this layer merges, then applies the merged matrix to each group's tokens (spec §9: cheaper
// than applying every expert and mixing whenever a group has more than one token).
//
// Random draws: a layer uses three tensor ids from step.tensor on: the weights' policy draws at step.tensor, the
// bias's at step.tensor + 1, the router at step.tensor + 2. Give consecutive layers ids three apart.

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/detail/gemm.hpp"
#include "camex/merge/concepts.hpp"
#include "camex/route/concepts.hpp"
#include "camex/route/groups.hpp"

namespace camex {

/// The tensors of one merged tensor's operands: experts [n, P] and base [1, P] (empty when the policy has none).
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

template <MergePolicy Policy, Router RouterType>
  requires std::same_as<typename Policy::scalar_type, typename RouterType::scalar_type> &&
           std::same_as<typename Policy::execution_space, typename RouterType::execution_space>
class MergedLinear {
 public:
  using scalar_type = typename Policy::scalar_type;
  using execution_space = typename Policy::execution_space;
  using Scalar = scalar_type;
  using ExecSpace = execution_space;
  using In = ConstMatrix<Scalar, ExecSpace>;
  using Out = Matrix<Scalar, ExecSpace>;
  using Mask = Kokkos::View<const std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space>;

  /// `weight_policy` merges the [O, I] weights (its problem's shape), `bias_policy` (null: no bias) the [O, 1]
  /// biases; both for the layout's G routing groups and the router's n experts. The layer keeps references.
  MergedLinear(Policy& weight_policy, Policy* bias_policy, RouterType& router, const RoutingLayout& layout)
      : weights_(weight_policy), bias_(bias_policy), router_(router), layout_(layout) {
    constexpr const char* fn = "camex::MergedLinear";
    detail::check_layout(fn, layout);
    const MergeProblem& w = weight_policy.problem();
    if (w.experts != router.experts())
      throw argument_error(fn, "weight_policy", detail::concat("a problem over the router's ", router.experts(), " experts"),
                           detail::concat(w.experts, " experts"));
    if (w.groups < layout.groups())
      throw argument_error(fn, "weight_policy", detail::concat("a problem for at least layout.groups() = ", layout.groups(), " groups"),
                           detail::concat(w.groups, " groups"));
    if (bias_policy) {
      const MergeProblem& b = bias_policy->problem();
      if (b.experts != w.experts || b.groups < layout.groups() || b.shape != TensorShape{w.shape.rows, 1})
        throw argument_error(fn, "bias_policy",
                             detail::concat("a problem over ", w.experts, " experts, >= ", layout.groups(),
                                            " groups, shape [", w.shape.rows, ", 1]"),
                             detail::concat(b.experts, " experts, ", b.groups, " groups, shape [", b.shape.rows, ", ",
                                            b.shape.cols, ']'));
    }
  }

  std::size_t outputs() const { return weights_.problem().shape.rows; }
  std::size_t inputs() const { return weights_.problem().shape.cols; }
  std::size_t experts() const { return weights_.problem().experts; }
  const RoutingLayout& layout() const { return layout_; }

  std::size_t workspace_bytes() const {
    detail::WorkspaceCarver<ExecSpace> carver;
    carve(carver);
    return carver.bytes();
  }

  /// y [S·L, O] for tokens x [S·L, I] (padding [S, L] or empty); returns the router's auxiliary loss. x and the
  /// tensors must keep their values until backward has run.
  double forward(const ExecSpace& space, const StepContext& step, const In& x, const Mask& padding,
                 const ExpertTensors<Scalar, ExecSpace>& weights, const std::optional<ExpertTensors<Scalar, ExecSpace>>& bias,
                 const Out& y, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::MergedLinear::forward";
    detail::require_shape(fn, "x", x, layout_.tokens(), inputs(), "[S·L, I] (layout tokens, the weights' columns)");
    detail::require_shape(fn, "y", y, layout_.tokens(), outputs(), "[S·L, O] (layout tokens, the weights' rows)");
    if (bias_ && !bias) throw argument_error(fn, "bias", "the bias tensors (the layer has a bias policy)", "none");
    if (!bias_ && bias) throw argument_error(fn, "bias", "none (the layer has no bias policy)", "bias tensors");
    detail::WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    x_ = x;
    padding_ = padding;
    forwarded_ = true;

    routing_inputs(space, layout_, x, padding, b.routed);
    StepContext router_step = step;
    router_step.tensor = step.tensor + 2;
    const double aux = router_.forward(space, router_step, b.routed, b.scores, b.router);
    weights_.prepare(space, step, weights.experts, weights.base, b.weight_policy);
    weights_.merge(space, b.scores, b.merged_weights, b.weight_policy);
    // y_g = X_g W_gᵀ for the T tokens of each group (consecutive rows of x).
    const int per = static_cast<int>(layout_.group_length()), out = static_cast<int>(outputs()),
              in = static_cast<int>(inputs());
    detail::gemm(space, detail::GemmBatch<Scalar>{.transpose_a = detail::Transpose::no, .transpose_b = detail::Transpose::yes,
                                                  .m = per, .n = out, .k = in, .alpha = 1, .a = x.data(),
                                                  .lda = detail::row_stride(x), .stride_a = per * detail::row_stride(x),
                                                  .b = b.merged_weights.data(), .ldb = in,
                                                  .stride_b = static_cast<std::ptrdiff_t>(out) * in, .beta = 0, .c = y.data(),
                                                  .ldc = detail::row_stride(y), .stride_c = per * detail::row_stride(y),
                                                  .batch = static_cast<int>(layout_.groups())});
    if (bias_) {
      StepContext bias_step = step;
      bias_step.tensor = step.tensor + 1;
      bias_->prepare(space, bias_step, bias->experts, bias->base, b.bias_policy);
      bias_->merge(space, b.scores, b.merged_bias, b.bias_policy);
      const auto merged_bias = b.merged_bias;
      const std::size_t tokens = layout_.tokens(), group_length = layout_.group_length(), o_count = outputs();
      Kokkos::parallel_for("camex::MergedLinear[bias]", Kokkos::RangePolicy<ExecSpace>(space, 0, tokens * o_count),
                           KOKKOS_LAMBDA(std::size_t w) {
                             const std::size_t t = w / o_count, o = w % o_count;
                             y(t, o) += merged_bias(t / group_length, o);
                           });
    }
    return aux;
  }

  /// d_x [S·L, I] and the gradients of the experts and bases (all overwritten), of the policies' and the router's
  /// parameters (overwritten by them), from d_y [S·L, O] and the auxiliary loss's cotangent.
  void backward(const ExecSpace& space, const In& d_y, double d_aux, const Out& d_x,
                const ExpertGradients<Scalar, ExecSpace>& d_weights,
                const std::optional<ExpertGradients<Scalar, ExecSpace>>& d_bias, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::MergedLinear::backward";
    if (!forwarded_) throw argument_error(fn, "this", "a layer whose forward has run", "no forward yet");
    detail::require_shape(fn, "d_y", d_y, layout_.tokens(), outputs(), "[S·L, O], the shape of y");
    detail::require_shape(fn, "d_x", d_x, layout_.tokens(), inputs(), "[S·L, I], the shape of x");
    if (bool(bias_) != bool(d_bias))
      throw argument_error(fn, "d_bias", bias_ ? "the bias gradients (the layer has a bias)" : "none (the layer has no bias)",
                           d_bias ? "bias gradients" : "none");
    detail::WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    const int per = static_cast<int>(layout_.group_length()), out = static_cast<int>(outputs()),
              in = static_cast<int>(inputs()), groups = static_cast<int>(layout_.groups());
    const auto x = x_;
    // d W_g = d_Y_gᵀ X_g  [O, I];  d X_g = d_Y_g W_g  [T, I].
    detail::gemm(space, detail::GemmBatch<Scalar>{.transpose_a = detail::Transpose::yes, .transpose_b = detail::Transpose::no,
                                                  .m = out, .n = in, .k = per, .alpha = 1, .a = d_y.data(),
                                                  .lda = detail::row_stride(d_y), .stride_a = per * detail::row_stride(d_y),
                                                  .b = x.data(), .ldb = detail::row_stride(x), .stride_b = per * detail::row_stride(x),
                                                  .beta = 0, .c = b.d_merged_weights.data(), .ldc = in,
                                                  .stride_c = static_cast<std::ptrdiff_t>(out) * in, .batch = groups});
    detail::gemm(space, detail::GemmBatch<Scalar>{.transpose_a = detail::Transpose::no, .transpose_b = detail::Transpose::no,
                                                  .m = per, .n = in, .k = out, .alpha = 1, .a = d_y.data(),
                                                  .lda = detail::row_stride(d_y), .stride_a = per * detail::row_stride(d_y),
                                                  .b = b.merged_weights.data(), .ldb = in,
                                                  .stride_b = static_cast<std::ptrdiff_t>(out) * in, .beta = 0,
                                                  .c = d_x.data(), .ldc = detail::row_stride(d_x),
                                                  .stride_c = per * detail::row_stride(d_x), .batch = groups});
    weights_.backward(space, b.scores, b.d_merged_weights, b.d_scores, d_weights.experts, d_weights.base, b.weight_policy);
    if (bias_) {
      const auto d_merged_bias = b.d_merged_bias;
      const std::size_t group_length = layout_.group_length(), o_count = outputs();
      Kokkos::parallel_for("camex::MergedLinear[d_bias]", Kokkos::RangePolicy<ExecSpace>(space, 0, groups * o_count),
                           KOKKOS_LAMBDA(std::size_t w) {
                             const std::size_t g = w / o_count, o = w % o_count;
                             Scalar sum = 0;
                             for (std::size_t t = g * group_length; t < (g + 1) * group_length; ++t) sum += d_y(t, o);
                             d_merged_bias(g, o) = sum;
                           });
      bias_->backward(space, b.scores, d_merged_bias, b.d_scores_bias, d_bias->experts, d_bias->base, b.bias_policy);
      const auto d_scores = b.d_scores, d_scores_bias = b.d_scores_bias;
      Kokkos::parallel_for("camex::MergedLinear[d_scores]", Kokkos::RangePolicy<ExecSpace>(space, 0, d_scores.size()),
                           KOKKOS_LAMBDA(std::size_t w) { d_scores.data()[w] += d_scores_bias.data()[w]; });
    }
    router_.backward(space, b.d_scores, d_aux, b.d_routed, b.router);
    // The routing path's contribution to d_x: routing_inputs_backward writes it, then it is added.
    routing_inputs_backward(space, layout_, b.d_routed, padding_, b.d_x_route);
    const auto d_x_route = b.d_x_route;
    const std::size_t width = inputs();
    Kokkos::parallel_for("camex::MergedLinear[d_x]", Kokkos::RangePolicy<ExecSpace>(space, 0, layout_.tokens() * width),
                         KOKKOS_LAMBDA(std::size_t w) { d_x(w / width, w % width) += d_x_route(w / width, w % width); });
  }

  // Public for nvcc (extended lambdas in the callers); not part of the API.
  struct Buffers {
    typename detail::WorkspaceCarver<ExecSpace>::template Matrix<Scalar> routed, scores, d_scores, d_scores_bias, d_routed,
        merged_weights, d_merged_weights, merged_bias, d_merged_bias, d_x_route;
    Workspace<ExecSpace> router, weight_policy, bias_policy;
  };

  Buffers carve(detail::WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = layout_.groups(), n = experts(), in = inputs(), out = outputs();
    Buffers b;
    b.routed = carver.template take_matrix<Scalar>(g, in);
    b.scores = carver.template take_matrix<Scalar>(g, n);
    b.d_scores = carver.template take_matrix<Scalar>(g, n);
    b.d_scores_bias = carver.template take_matrix<Scalar>(bias_ ? g : 0, n);
    b.d_routed = carver.template take_matrix<Scalar>(g, in);
    b.merged_weights = carver.template take_matrix<Scalar>(g, out * in);
    b.d_merged_weights = carver.template take_matrix<Scalar>(g, out * in);
    b.merged_bias = carver.template take_matrix<Scalar>(bias_ ? g : 0, out);
    b.d_merged_bias = carver.template take_matrix<Scalar>(bias_ ? g : 0, out);
    b.d_x_route = carver.template take_matrix<Scalar>(layout_.tokens(), in);
    const auto sub = [&](std::size_t bytes) {
      const auto raw = carver.template take<unsigned char>(bytes);
      return Workspace<ExecSpace>(raw.data(), raw.extent(0));
    };
    b.router = sub(router_.workspace_bytes());
    b.weight_policy = sub(weights_.workspace_bytes());
    b.bias_policy = sub(bias_ ? bias_->workspace_bytes() : 0);
    return b;
  }

 private:
  Policy& weights_;
  Policy* bias_;
  RouterType& router_;
  RoutingLayout layout_;
  In x_;
  Mask padding_;
  bool forwarded_ = false;
};

}  // namespace camex
