#pragma once
// The CAMEx code's GPT-2 merged linear (its Conv1D_CAMEx with mask_type = ties and curvature on, the scripted
// WikiText configuration) as one object: a user who wants to reproduce that layer sets this one thing instead of
// seven options spread over the policy, the router and the routing layout. docs/policies/camex_code.md lists every
// choice with where it comes from; in short:
//
//   mask        TiesVariant::sign_agreement: m_i = [sign(tau_i) == sign(sum_j tau_j)] on the raw deltas, applied
//               after the curvature transform (docs/algorithms.md §4.3, the code's "ties")
//   transform   CurvatureTransform, rank 8, CurvatureInit::identity_factors (every factor I, so M_i = r I at init)
//   merge       alpha = 1, the base a parameter: W_g = E_m + sum_i s_gi m_i .* M_i(tau_i)
//   router      NoisyTopKGate with k = n (a dense softmax of the noisy logits), noise floor 0.01, weights
//               N(0, 0.02^2), balancing coefficient 1e-5 (the GPT-2 layer's)
//   routing     causal segments of T = 256 tokens, padding included in the means, GateRows::per_segment (every
//               segment's own gates balanced; segment 0 merges with its own, detached)
//   bias        merged like the weights, its delta transformed by its own output factors (P (x) Q) beta and
//               masked by the sign agreement of the raw bias deltas: the code's bias path cannot run (docs/algorithms.md §7),
//               and this is the form its older, working file uses
//
// Rank, segment length and coefficient stay settable (CamexCodeOptions) for smaller test layers.

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/merge/ties.hpp"
#include "camex/nn/merged_linear.hpp"
#include "camex/route/groups.hpp"
#include "camex/route/noisy_top_k.hpp"

namespace camex {

struct CamexCodeOptions {
  std::size_t rank = 8;               ///< rank_c of the scripts
  std::size_t segment = 256;          ///< T, hard-coded in the code
  double balance_coefficient = 1e-5;  ///< the GPT-2 layer's coefficient
  bool bias = true;                   ///< GPT-2's Conv1D has one
};

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class CamexCodeLinear {
 public:
  using Policy = TiesCA<Scalar, ExecSpace>;
  using Router = NoisyTopKGate<Scalar, ExecSpace>;
  using Layer = MergedLinear<Policy, Router>;
  using In = typename Layer::In;
  using Out = typename Layer::Out;
  using PaddingFlags = typename Layer::PaddingFlags;
  static constexpr std::uint32_t random_streams = Layer::random_streams;

  /// The pieces of the preset, each as the layer below is built from them.
  static TiesMask mask() { return {.variant = TiesVariant::sign_agreement}; }
  static CurvatureOptions curvature(const CamexCodeOptions& o) {
    return {.rank = o.rank, .init = CurvatureInit::identity_factors};
  }
  static MergeOptions merge_options() { return {.alpha = 1.0, .base = BaseSource::parameter}; }
  static NoisyTopKOptions router_options(const CamexCodeOptions& o) {
    return {.k = 0, .noisy = true, .noise_floor = 0.01, .balance_coefficient = o.balance_coefficient, .trainable = true,
            .init_std = 0.02};
  }
  static RoutingLayout layout(std::size_t sequences, std::size_t length, const CamexCodeOptions& o) {
    return {.sequences = sequences, .length = length, .granularity = Granularity::causal_segment, .segment = o.segment,
            .padding = Padding::include, .gate_rows = GateRows::per_segment};
  }

  /// A layer mapping `inputs` to `outputs` features over `experts` experts and a base, for batches of `sequences`
  /// sequences of `length` tokens; the router's weights drawn from `router_seed`.
  CamexCodeLinear(std::size_t outputs, std::size_t inputs, std::size_t experts, std::size_t sequences, std::size_t length,
                  const CamexCodeOptions& options = {}, std::uint64_t router_seed = 0)
      : layout_(checked_layout(sequences, length, options)),
        weights_({experts, layout_.groups(), {outputs, inputs}}, mask(), curvature(options), merge_options()),
        bias_(options.bias ? std::optional<Policy>(std::in_place, MergeProblem{experts, layout_.groups(), {outputs, 1}},
                                                   mask(), curvature(options), merge_options())
                           : std::nullopt),
        router_(inputs, experts, layout_.groups(), router_options(options), router_seed),
        layer_(weights_, bias_ ? &*bias_ : nullptr, router_, layout_) {}

  CamexCodeLinear(const CamexCodeLinear&) = delete;  // the layer refers to the members
  CamexCodeLinear& operator=(const CamexCodeLinear&) = delete;

  Policy& weight_policy() { return weights_; }
  Policy* bias_policy() { return bias_ ? &*bias_ : nullptr; }
  Router& router() { return router_; }
  Layer& layer() { return layer_; }
  const RoutingLayout& routing_layout() const { return layout_; }

  /// Every trainable array beside the experts and bases: the curvature factors of the weights and the bias, and
  /// the router's two weight matrices.
  std::vector<Parameter<Scalar, ExecSpace>> parameters() {
    std::vector<Parameter<Scalar, ExecSpace>> out = weights_.parameters();
    if (bias_)
      for (auto p : bias_->parameters()) {
        p.name = "bias." + p.name;
        out.push_back(p);
      }
    for (const auto& p : router_.parameters()) out.push_back(p);
    return out;
  }

  /// The layer's tensors by name, as MergedLinear::tensors names them (docs/layers.md, "Tensors by name").
  NamedTensors<Scalar, ExecSpace> tensors(const ExpertStorage<Scalar, ExecSpace>& weights,
                                          const std::optional<ExpertStorage<Scalar, ExecSpace>>& bias = std::nullopt) {
    return layer_.tensors(weights, bias);
  }

  std::size_t workspace_bytes() const { return layer_.workspace_bytes(); }

  /// MergedLinear::forward and backward (nn/merged_linear.hpp).
  double forward(const ExecSpace& space, const StepContext& step, const In& x, const PaddingFlags& padding,
                 const ExpertTensors<Scalar, ExecSpace>& weights,
                 const std::optional<ExpertTensors<Scalar, ExecSpace>>& bias, const Out& y,
                 const Workspace<ExecSpace>& workspace) {
    return layer_.forward(space, step, x, padding, weights, bias, y, workspace);
  }
  void backward(const ExecSpace& space, const In& d_y, double d_aux, const Out& d_x,
                const ExpertGradients<Scalar, ExecSpace>& d_weights,
                const std::optional<ExpertGradients<Scalar, ExecSpace>>& d_bias, const Workspace<ExecSpace>& workspace) {
    layer_.backward(space, d_y, d_aux, d_x, d_weights, d_bias, workspace);
  }

 private:
  static RoutingLayout checked_layout(std::size_t sequences, std::size_t length, const CamexCodeOptions& o) {
    constexpr const char* fn = "camex::CamexCodeLinear";
    if (o.segment == 0 || length % o.segment != 0)
      throw argument_error(fn, "options.segment",
                           concat("a segment length dividing the sequence length ", length,
                                          " (the CAMEx code's T = 256 needs sequences of a multiple of 256 tokens)"),
                           concat(o.segment));
    const RoutingLayout l = layout(sequences, length, o);
    detail::check_layout(fn, l);
    return l;
  }

  RoutingLayout layout_;
  Policy weights_;
  std::optional<Policy> bias_;
  Router router_;
  Layer layer_;
};

}  // namespace camex
