#pragma once
// The CAMEx merged linear layer (docs/algorithms.md §3, §9): y_t = W_g x_t + b_g for every token t of routing group g, where
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
// Evaluation order (docs/algorithms.md §9, nn/evaluation_order.hpp): merge W_g per group then apply it to the group's tokens,
// or apply every prepared row of a RowCombinationPolicy to every token and mix the results by the coefficients;
// by default the cheaper by the cost model, which is merging unless groups hold one or two tokens.
//
// Random draws: a layer uses `random_streams` draw streams from step.stream on (core/step.hpp): the weights'
// policy's, the bias's, then the router's (three for the built-ins); a model hands them out with DrawStreams.

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/nn/expert_tensors.hpp"
#include "camex/nn/layer_problem.hpp"
#include "camex/nn/merged_affine.hpp"
#include "camex/nn/named_tensors.hpp"
#include "camex/merge/concepts.hpp"
#include "camex/route/concepts.hpp"
#include "camex/route/groups.hpp"
#include "camex/route/routing_stage.hpp"

namespace camex {

template <MergePolicy Policy, RouterFor<Policy> RouterType>
class MergedLinear {
 public:
  using scalar_type = typename Policy::scalar_type;
  using execution_space = typename Policy::execution_space;
  using Scalar = scalar_type;
  using ExecSpace = execution_space;
  using In = ConstMatrix<Scalar, ExecSpace>;
  using Out = Matrix<Scalar, ExecSpace>;
  using PaddingFlags = Kokkos::View<const std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space>;
  static constexpr std::uint32_t random_streams =
      detail::MergedAffine<Policy>::random_streams + random_streams_of<RouterType>;

  /// `weight_policy` merges the [O, I] weights (its problem's shape), `bias_policy` (null: no bias) the [O, 1]
  /// biases; both for the layout's G routing groups and the router's n experts. The layer keeps references.
  MergedLinear(Policy& weight_policy, Policy* bias_policy, RouterType& router, const RoutingLayout& layout,
               const EvaluationOptions& evaluation = {})
      : affine_(check(layout), "weight_policy", "bias_policy", weight_policy, bias_policy, router.experts(), layout.groups(),
                layout.group_length(), evaluation),
        routing_(router, layout, affine_.inputs()),
        layout_(layout) {}

  std::size_t outputs() const { return affine_.outputs(); }
  std::size_t inputs() const { return affine_.inputs(); }
  std::size_t experts() const { return affine_.experts(); }
  const RoutingLayout& layout() const { return layout_; }
  /// The order the weights are evaluated in (never automatic).
  EvaluationOrder order() const { return affine_.order(); }

  std::size_t workspace_bytes() const {
    WorkspaceCarver<ExecSpace> carver;
    carve(carver);
    return carver.bytes();
  }

  /// y [S·L, O] for tokens x [S·L, I] (padding [S, L] or empty); returns the router's auxiliary loss. x and the
  /// tensors must keep their values until backward has run. What the host must learn (the policies' statuses, the
  /// loss) is read back once, at the end (core/read_backs.hpp); where `step` carries a read-back batch the layer
  /// queues it there instead, and the loss of a router that queues it arrives in the batch's loss().
  double forward(const ExecSpace& space, const StepContext& step, const In& x, const PaddingFlags& padding,
                 const ExpertTensors<Scalar, ExecSpace>& weights, const std::optional<ExpertTensors<Scalar, ExecSpace>>& bias,
                 const Out& y, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::MergedLinear::forward";
    require_shape(fn, "x", x, layout_.tokens(), inputs(), "[S·L, I] (layout tokens, the weights' columns)");
    require_shape(fn, "y", y, layout_.tokens(), outputs(), "[S·L, O] (layout tokens, the weights' rows)");
    affine_.require_bias_operand(fn, "bias", bias);
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    x_ = x;
    forwarded_ = true;
    return with_step_read_backs(space, step, read_backs_, [&](const StepContext& batched) {
      const double aux = routing_.forward(space, batched.substream(detail::MergedAffine<Policy>::random_streams), x,
                                          padding, b.scores, b.routing);
      affine_.forward(space, batched, b.scores, x, weights, bias, y, b.affine);
      return aux;
    });
  }

  /// d_x [S·L, I] and the gradients of the experts and bases (all overwritten), of the policies' and the router's
  /// parameters (overwritten by them), from d_y [S·L, O] and the auxiliary loss's cotangent.
  void backward(const ExecSpace& space, const In& d_y, double d_aux, const Out& d_x,
                const ExpertGradients<Scalar, ExecSpace>& d_weights,
                const std::optional<ExpertGradients<Scalar, ExecSpace>>& d_bias, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::MergedLinear::backward";
    if (!forwarded_) throw argument_error(fn, "this", "a layer whose forward has run", "no forward yet");
    require_shape(fn, "d_y", d_y, layout_.tokens(), outputs(), "[S·L, O], the shape of y");
    require_shape(fn, "d_x", d_x, layout_.tokens(), inputs(), "[S·L, I], the shape of x");
    affine_.require_bias_operand(fn, "d_bias", d_bias);
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    affine_.backward(space, b.scores, x_, d_y, d_x, b.d_scores, d_weights, d_bias, b.affine);
    routing_.backward(space, b.d_scores, d_aux, d_x, b.routing);
  }

  /// The layer's tensors by name (nn/named_tensors.hpp, docs/layers.md): "weight.experts" [n, O, I], "weight.base"
  /// [O, I] where the policy has a base, "weight.<p>" for the weights' policy's parameters, the same under "bias."
  /// ([n, O], [O]) where there is a bias, then "router.<p>". `weights` and `bias` are the model's storage.
  NamedTensors<Scalar, ExecSpace> tensors(const ExpertStorage<Scalar, ExecSpace>& weights,
                                          const std::optional<ExpertStorage<Scalar, ExecSpace>>& bias = std::nullopt) {
    NamedTensors<Scalar, ExecSpace> named;
    affine_.name_tensors("camex::MergedLinear::tensors", "weights", "bias", "weight.", "bias.", weights, bias, named);
    named.add_parameters("router.", routing_.router().parameters());
    return named;
  }

 private:
  struct Buffers {
    typename WorkspaceCarver<ExecSpace>::template Matrix<Scalar> scores, d_scores;
    typename RoutingStage<RouterType>::Buffers routing;
    typename detail::MergedAffine<Policy>::Buffers affine;
  };

  Buffers carve(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = layout_.groups(), n = experts();
    Buffers b;
    b.scores = carver.template take_matrix<Scalar>(g, n);
    b.d_scores = carver.template take_matrix<Scalar>(g, n);
    b.routing = routing_.carve(carver);
    b.affine = affine_.carve(carver);
    return b;
  }

  static const char* check(const RoutingLayout& layout) {
    detail::check_layout("camex::MergedLinear", layout);
    return "camex::MergedLinear";
  }

  detail::MergedAffine<Policy> affine_;
  RoutingStage<RouterType> routing_;
  RoutingLayout layout_;
  ReadBackBatch<ExecSpace> read_backs_;
  In x_;
  bool forwarded_ = false;
};

/// `MergedLinear layer(weights, nullptr, router, layout)` builds a layer without a bias: a null pointer names no
/// Policy to deduce from, so the guide takes the policy type from the weights.
template <class Policy, class BiasPolicy, class RouterType>
  requires std::same_as<BiasPolicy, Policy*> || std::same_as<BiasPolicy, std::nullptr_t>
MergedLinear(Policy&, BiasPolicy, RouterType&, const RoutingLayout&, const EvaluationOptions& = {})
    -> MergedLinear<Policy, RouterType>;

}  // namespace camex
