#pragma once
// A merged feed-forward block (SMEAR, Lory): one routing distribution merges every tensor of a whole expert module,
//
//   y_t = W2_g act(W1_g x_t + b1_g) + b2_g     for every token t of routing group g,
//
// where W1 [H, I], b1 [H], W2 [O, H], b2 [O] are each the merge, with group g's scores from one router, of the n
// experts' tensors around their bases (any merge policy). The CAMEx code instead routes each linear map on its own
// (two MergedLinear layers with their own routers, docs/algorithms.md §3); this is the whole-module form.
//
// Random draws: `random_streams` draw streams from step.stream on (core/step.hpp): W1's and b1's policies, W2's and
// b2's, then the router (five for the built-ins).

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/platform/kokkos_compat.hpp"
#include "camex/nn/activation.hpp"
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
class MergedFFN {
 public:
  using scalar_type = typename Policy::scalar_type;
  using execution_space = typename Policy::execution_space;
  using Scalar = scalar_type;
  using ExecSpace = execution_space;
  using In = ConstMatrix<Scalar, ExecSpace>;
  using Out = Matrix<Scalar, ExecSpace>;
  using PaddingFlags = Kokkos::View<const std::uint8_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space>;
  static constexpr std::uint32_t random_streams =
      2 * detail::MergedAffine<Policy>::random_streams + random_streams_of<RouterType>;
  using Tensors = ExpertTensors<Scalar, ExecSpace>;
  using Gradients = ExpertGradients<Scalar, ExecSpace>;

  /// `fc` merges W1 [H, I] and `proj` W2 [O, H] (their problems' shapes), `fc_bias` and `proj_bias` (null: none)
  /// the biases [H, 1] and [O, 1]; all for the layout's G groups and the router's n experts. Each weight is
  /// evaluated in the order `evaluation` picks for its own shape (nn/evaluation_order.hpp).
  MergedFFN(Policy& fc, Policy* fc_bias, Policy& proj, Policy* proj_bias, RouterType& router, const RoutingLayout& layout,
            Activation activation = Activation::gelu_tanh, const EvaluationOptions& evaluation = {})
      : fc_(check(layout), "fc", "fc_bias", fc, fc_bias, router.experts(), layout.groups(), layout.group_length(), evaluation),
        proj_("camex::MergedFFN", "proj", "proj_bias", proj, proj_bias, router.experts(), layout.groups(),
              layout.group_length(), evaluation),
        routing_(router, layout, fc_.inputs()),
        layout_(layout),
        activation_(activation) {
    if (proj_.inputs() != fc_.outputs())
      throw argument_error("camex::MergedFFN", "proj",
                           concat("a weight of ", fc_.outputs(), " columns (fc's outputs, the hidden width)"),
                           concat(proj_.inputs(), " columns"));
  }

  std::size_t inputs() const { return fc_.inputs(); }
  std::size_t hidden() const { return fc_.outputs(); }
  std::size_t outputs() const { return proj_.outputs(); }
  std::size_t experts() const { return fc_.experts(); }
  const RoutingLayout& layout() const { return layout_; }
  EvaluationOrder fc_order() const { return fc_.order(); }
  EvaluationOrder proj_order() const { return proj_.order(); }

  std::size_t workspace_bytes() const {
    WorkspaceCarver<ExecSpace> carver;
    carve(carver);
    return carver.bytes();
  }

  /// y [S·L, O] for tokens x [S·L, I] (padding [S, L] or empty); returns the router's auxiliary loss. The host's
  /// reads are taken once, at the end, or queued on the step's batch where it carries one (as MergedLinear::forward).
  double forward(const ExecSpace& space, const StepContext& step, const In& x, const PaddingFlags& padding, const Tensors& fc,
                 const std::optional<Tensors>& fc_bias, const Tensors& proj, const std::optional<Tensors>& proj_bias,
                 const Out& y, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::MergedFFN::forward";
    require_shape(fn, "x", x, layout_.tokens(), inputs(), "[S·L, I] (layout tokens, fc's columns)");
    require_shape(fn, "y", y, layout_.tokens(), outputs(), "[S·L, O] (layout tokens, proj's rows)");
    fc_.require_bias_operand(fn, "fc_bias", fc_bias);
    proj_.require_bias_operand(fn, "proj_bias", proj_bias);
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    x_ = x;
    forwarded_ = true;
    return with_step_read_backs(space, step, read_backs_, [&](const StepContext& batched) {
      const double aux = routing_.forward(space, batched.substream(2 * detail::MergedAffine<Policy>::random_streams), x,
                                          padding, b.scores, b.routing);
      fc_.forward(space, batched, b.scores, x, fc, fc_bias, b.hidden, b.fc);
      activation_forward(space, activation_, b.hidden, b.activated);
      proj_.forward(space, batched.substream(detail::MergedAffine<Policy>::random_streams), b.scores, b.activated, proj,
                    proj_bias, y, b.proj);
      return aux;
    });
  }

  /// d_x and every tensor's gradient (overwritten), the policies' and router's parameter gradients (overwritten by
  /// them), from d_y [S·L, O] and the auxiliary loss's cotangent.
  void backward(const ExecSpace& space, const In& d_y, double d_aux, const Out& d_x, const Gradients& d_fc,
                const std::optional<Gradients>& d_fc_bias, const Gradients& d_proj,
                const std::optional<Gradients>& d_proj_bias, const Workspace<ExecSpace>& workspace) {
    constexpr const char* fn = "camex::MergedFFN::backward";
    if (!forwarded_) throw argument_error(fn, "this", "a layer whose forward has run", "no forward yet");
    require_shape(fn, "d_y", d_y, layout_.tokens(), outputs(), "[S·L, O], the shape of y");
    require_shape(fn, "d_x", d_x, layout_.tokens(), inputs(), "[S·L, I], the shape of x");
    fc_.require_bias_operand(fn, "d_fc_bias", d_fc_bias);
    proj_.require_bias_operand(fn, "d_proj_bias", d_proj_bias);
    WorkspaceCarver<ExecSpace> carver(fn, workspace);
    const auto b = carve(carver);
    proj_.backward(space, b.scores, b.activated, d_y, b.d_hidden, b.d_scores_proj, d_proj, d_proj_bias, b.proj);
    activation_backward(space, activation_, b.hidden, b.d_hidden, b.d_hidden, false);
    fc_.backward(space, b.scores, x_, b.d_hidden, d_x, b.d_scores, d_fc, d_fc_bias, b.fc);
    const auto d_scores = b.d_scores, d_scores_proj = b.d_scores_proj;
    Kokkos::parallel_for("camex::MergedFFN[d_scores]", Kokkos::RangePolicy<ExecSpace>(space, 0, d_scores.size()),
                         KOKKOS_LAMBDA(std::size_t w) { d_scores.data()[w] += d_scores_proj.data()[w]; });
    routing_.backward(space, b.d_scores, d_aux, d_x, b.routing);
  }

  /// The block's tensors by name (nn/named_tensors.hpp, docs/layers.md): "fc.weight.*", "fc.bias.*",
  /// "proj.weight.*" and "proj.bias.*" as MergedLinear names its weight and bias, then "router.<p>".
  NamedTensors<Scalar, ExecSpace> tensors(const ExpertStorage<Scalar, ExecSpace>& fc_weights,
                                          const std::optional<ExpertStorage<Scalar, ExecSpace>>& fc_bias,
                                          const ExpertStorage<Scalar, ExecSpace>& proj_weights,
                                          const std::optional<ExpertStorage<Scalar, ExecSpace>>& proj_bias) {
    constexpr const char* fn = "camex::MergedFFN::tensors";
    NamedTensors<Scalar, ExecSpace> named;
    fc_.name_tensors(fn, "fc_weights", "fc_bias", "fc.weight.", "fc.bias.", fc_weights, fc_bias, named);
    proj_.name_tensors(fn, "proj_weights", "proj_bias", "proj.weight.", "proj.bias.", proj_weights, proj_bias, named);
    named.add_parameters("router.", routing_.router().parameters());
    return named;
  }

 private:
  struct Buffers {
    typename WorkspaceCarver<ExecSpace>::template Matrix<Scalar> scores, d_scores, d_scores_proj, hidden,
        activated, d_hidden;
    typename RoutingStage<RouterType>::Buffers routing;
    typename detail::MergedAffine<Policy>::Buffers fc, proj;
  };

  Buffers carve(WorkspaceCarver<ExecSpace>& carver) const {
    const std::size_t g = layout_.groups(), n = experts(), tokens = layout_.tokens();
    Buffers b;
    b.scores = carver.template take_matrix<Scalar>(g, n);
    b.d_scores = carver.template take_matrix<Scalar>(g, n);
    b.d_scores_proj = carver.template take_matrix<Scalar>(g, n);
    b.hidden = carver.template take_matrix<Scalar>(tokens, hidden());
    b.activated = carver.template take_matrix<Scalar>(tokens, hidden());
    b.d_hidden = carver.template take_matrix<Scalar>(tokens, hidden());
    b.routing = routing_.carve(carver);
    b.fc = fc_.carve(carver);
    b.proj = proj_.carve(carver);
    return b;
  }

  static const char* check(const RoutingLayout& layout) {
    detail::check_layout("camex::MergedFFN", layout);
    return "camex::MergedFFN";
  }

  detail::MergedAffine<Policy> fc_, proj_;
  RoutingStage<RouterType> routing_;
  RoutingLayout layout_;
  Activation activation_;
  ReadBackBatch<ExecSpace> read_backs_;
  In x_;
  bool forwarded_ = false;
};

/// A MergedFFN whose biases are null pointers (no bias) or policies of the weights' type.
template <class Policy, class FcBias, class ProjBias, class RouterType>
  requires(std::same_as<FcBias, Policy*> || std::same_as<FcBias, std::nullptr_t>) &&
          (std::same_as<ProjBias, Policy*> || std::same_as<ProjBias, std::nullptr_t>)
MergedFFN(Policy&, FcBias, Policy&, ProjBias, RouterType&, const RoutingLayout&, Activation = Activation::gelu_tanh,
          const EvaluationOptions& = {}) -> MergedFFN<Policy, RouterType>;

}  // namespace camex
