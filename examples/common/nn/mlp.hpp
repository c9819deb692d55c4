#pragma once
// The transformer's MLP in its two forms, y = proj(act(fc(x))), behind one interface (MlpLayer) so a model can
// mix them (a ViT with experts in its last blocks only) and its code is compiled once for every policy:
//
//   DenseMlp                        two dense linears (the dense baseline, and the model an SMoE is upcycled from)
//   MergedMlp<Policy, Router>       each linear a camex::MergedLinear with its own router, experts, base and policy
//                                   parameters (the CAMEx code's GPT-2 layer, docs/algorithms.md §3)
//
// Both declare their tensors in the model's arena (train/parameters.hpp) under a name prefix and their buffers in
// its activation arena (train/activations.hpp), bind to the parameters once they are allocated, and keep what the
// backward needs from the last forward. forward returns the routers' auxiliary loss (0 for the dense MLP);
// backward adds d_x and the tensors' gradients into buffers zeroed once per step. The merged linears of camex
// write (not add) the gradients of what they alone read: d_x, their experts and bases, and their policies' and
// routers' parameters; on buffers that nothing else writes and the step zeroed, writing and adding agree.

#include <camex/camex.hpp>
#include <camex/nn/activation.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "linear.hpp"
#include "tensor.hpp"
#include "common/train/activations.hpp"
#include "common/train/parameters.hpp"

namespace camex::examples {

struct MlpShape {
  std::size_t channels = 0;  ///< C, the model width
  std::size_t hidden = 0;    ///< H, the hidden width (4 C in GPT-2)
  Activation activation = Activation::gelu_tanh;
};

/// One block's MLP as the model sees it.
template <class T, class Space>
class MlpLayer {
 public:
  virtual ~MlpLayer() = default;
  /// How many draw streams (core/step.hpp) forward uses from its step's stream on.
  virtual std::uint32_t random_streams() const = 0;
  /// Declares the MLP's tensors in the model's arena under `prefix`; the residual projection's initial weights
  /// are N(0, proj_std^2).
  virtual void declare(ParameterArena<T, Space>& arena, const std::string& prefix, double proj_std) = 0;
  /// Declares the buffers the forward keeps and the backward accumulates into.
  virtual void declare(ActivationArena<T, Space>& arena) = 0;
  /// Called once the arena is allocated.
  virtual void bind(const ParameterArena<T, Space>& arena) = 0;
  /// Trainable tensors outside the arena (the library components' own), named under the prefix.
  virtual std::vector<NamedTensor<T, Space>> component_parameters() = 0;
  /// y [N, C] from x [N, C]; returns the routers' auxiliary loss (0 without routers).
  virtual double forward(const Space& space, const StepContext& step, const InMat<T, Space>& x, const Mat<T, Space>& y) = 0;
  virtual void backward(const Space& space, const InMat<T, Space>& d_y, const Mat<T, Space>& d_x) = 0;
};

template <class T, class Space>
class DenseMlp final : public MlpLayer<T, Space> {
 public:
  DenseMlp(const MlpShape& shape, std::size_t tokens) : shape_(shape), tokens_(tokens) {}

  std::uint32_t random_streams() const override { return 0; }  // it draws nothing

  /// GPT-2's initialisation: weights N(0, 0.02^2), the residual projection's N(0, proj_std^2), biases 0.
  void declare(ParameterArena<T, Space>& arena, const std::string& prefix, double proj_std) override {
    fc_w_ = arena.add(prefix + "fc.weight", {shape_.hidden, shape_.channels}, true, Init::normal(0.02));
    fc_b_ = arena.add(prefix + "fc.bias", {shape_.hidden}, false, Init::zeros());
    proj_w_ = arena.add(prefix + "proj.weight", {shape_.channels, shape_.hidden}, true, Init::normal(proj_std));
    proj_b_ = arena.add(prefix + "proj.bias", {shape_.channels}, false, Init::zeros());
  }
  void declare(ActivationArena<T, Space>& arena) override {
    using Part = typename ActivationArena<T, Space>::Part;
    arena.add(Part::values, tokens_, shape_.hidden, &h_);
    arena.add(Part::values, tokens_, shape_.hidden, &a_);
    arena.add(Part::gradients, tokens_, shape_.hidden, &d_a_);
    arena.add(Part::gradients, tokens_, shape_.hidden, &d_h_);
  }
  void bind(const ParameterArena<T, Space>& arena) override { arena_ = &arena; }
  std::vector<NamedTensor<T, Space>> component_parameters() override { return {}; }

  double forward(const Space& space, const StepContext&, const InMat<T, Space>& x, const Mat<T, Space>& y) override {
    x_ = x;
    linear_forward(space, x, arena_->value(fc_w_), arena_->value_vector(fc_b_), h_);
    activation_forward(space, shape_.activation, h_, a_);
    linear_forward(space, a_, arena_->value(proj_w_), arena_->value_vector(proj_b_), y);
    return 0;
  }

  void backward(const Space& space, const InMat<T, Space>& d_y, const Mat<T, Space>& d_x) override {
    linear_backward(space, a_, arena_->value(proj_w_), d_y, d_a_, arena_->gradient(proj_w_), arena_->gradient_vector(proj_b_));
    activation_backward(space, shape_.activation, h_, d_a_, d_h_, true);
    linear_backward(space, x_, arena_->value(fc_w_), d_h_, d_x, arena_->gradient(fc_w_), arena_->gradient_vector(fc_b_));
  }

 private:
  MlpShape shape_;
  std::size_t tokens_;
  const ParameterArena<T, Space>* arena_ = nullptr;
  std::size_t fc_w_ = 0, fc_b_ = 0, proj_w_ = 0, proj_b_ = 0;
  ConstMat<T, Space> x_;
  Mat<T, Space> h_, a_, d_a_, d_h_;
};

/// The four policies of one merged MLP (weights and biases of fc and proj); owned by the model, since dynamic
/// merging chains each of them through the layers.
template <class Policy>
struct MlpPolicies {
  Policy& fc_weight;
  Policy& fc_bias;
  Policy& proj_weight;
  Policy& proj_bias;
};

template <class T, class Space, MergePolicy Policy, RouterFor<Policy> Router>
class MergedMlp final : public MlpLayer<T, Space> {
 public:
  /// `policies` and `routers` (fc's, proj's) stay owned by the caller.
  MergedMlp(const MlpShape& shape, const RoutingLayout& layout, MlpPolicies<Policy> policies, Router& fc_router,
            Router& proj_router, const EvaluationOptions& evaluation = {})
      : shape_(shape),
        policies_(policies),
        fc_router_(fc_router),
        proj_router_(proj_router),
        fc_(MergedLinear<Policy, Router>(policies.fc_weight, &policies.fc_bias, fc_router, layout, evaluation)),
        proj_(MergedLinear<Policy, Router>(policies.proj_weight, &policies.proj_bias, proj_router, layout, evaluation)),
        tokens_(layout.tokens()) {
    fc_workspace_ = make_workspace<Space>(fc_.layer.workspace_bytes());
    proj_workspace_ = make_workspace<Space>(proj_.layer.workspace_bytes());
  }

  std::size_t experts() const { return fc_.layer.experts(); }
  /// fc's layer's, then proj's.
  std::uint32_t random_streams() const override { return 2 * MergedLinear<Policy, Router>::random_streams; }

  /// Every expert and base drawn like the dense MLP's weights (independently), biases 0.
  void declare(ParameterArena<T, Space>& arena, const std::string& prefix, double proj_std) override {
    const std::size_t n = experts(), c = shape_.channels, h = shape_.hidden;
    declare_linear(arena, prefix + "fc.", fc_, policies_.fc_weight, policies_.fc_bias, n, h, c, 0.02);
    declare_linear(arena, prefix + "proj.", proj_, policies_.proj_weight, policies_.proj_bias, n, c, h, proj_std);
    prefix_ = prefix;
  }
  /// d_a is written whole by proj's backward before anything reads it: scratch, with the values.
  void declare(ActivationArena<T, Space>& arena) override {
    using Part = typename ActivationArena<T, Space>::Part;
    arena.add(Part::values, tokens_, shape_.hidden, &h_);
    arena.add(Part::values, tokens_, shape_.hidden, &a_);
    arena.add(Part::values, tokens_, shape_.hidden, &d_a_);
    arena.add(Part::gradients, tokens_, shape_.hidden, &d_h_);
  }
  void bind(const ParameterArena<T, Space>& arena) override { arena_ = &arena; }

  /// The policies' and routers' own parameters (curvature factors, router weights), named under the prefix.
  std::vector<NamedTensor<T, Space>> component_parameters() override {
    std::vector<NamedTensor<T, Space>> out;
    const auto add = [&](const std::string& part, auto&& list) {
      for (auto& p : list) out.push_back({prefix_ + part + p.name, {p.value.extent(0)}, p, false});
    };
    add("fc.weight.", policies_.fc_weight.parameters());
    add("fc.bias.", policies_.fc_bias.parameters());
    add("fc.router.", fc_router_.parameters());
    add("proj.weight.", policies_.proj_weight.parameters());
    add("proj.bias.", policies_.proj_bias.parameters());
    add("proj.router.", proj_router_.parameters());
    return out;
  }

  double forward(const Space& space, const StepContext& step, const InMat<T, Space>& x, const Mat<T, Space>& y) override {
    double aux = fc_.layer.forward(space, step, x, {}, tensors(fc_), bias_tensors(fc_), h_, fc_workspace_);
    activation_forward(space, shape_.activation, h_, a_);
    aux += proj_.layer.forward(space, step.substream(MergedLinear<Policy, Router>::random_streams), a_, {}, tensors(proj_),
                               bias_tensors(proj_), y, proj_workspace_);
    return aux;
  }

  void backward(const Space& space, const InMat<T, Space>& d_y, const Mat<T, Space>& d_x) override {
    proj_.layer.backward(space, d_y, 1.0, d_a_, gradients(proj_), bias_gradients(proj_), proj_workspace_);
    activation_backward(space, shape_.activation, h_, d_a_, d_h_, true);
    fc_.layer.backward(space, d_h_, 1.0, d_x, gradients(fc_), bias_gradients(fc_), fc_workspace_);
  }

 private:
  struct Linear {
    explicit Linear(MergedLinear<Policy, Router> l) : layer(std::move(l)) {}
    MergedLinear<Policy, Router> layer;
    std::size_t experts = 0, bias_experts = 0;
    std::optional<std::size_t> base, bias_base;
  };

  /// Experts [n, O, I] and biases [n, O]; a base [1, O, I] and [1, O] where the policy takes one as a parameter.
  /// The leading extent of each shape is the row count of the [rows, P] matrix the layer sees.
  static void declare_linear(ParameterArena<T, Space>& arena, const std::string& name, Linear& l, Policy& weight,
                             Policy& bias, std::size_t n, std::size_t rows, std::size_t cols, double std) {
    l.experts = arena.add(name + "weight.experts", {n, rows, cols}, true, Init::normal(std));
    if (weight.base_source() == BaseSource::parameter)
      l.base = arena.add(name + "weight.base", {1, rows, cols}, true, Init::normal(std));
    l.bias_experts = arena.add(name + "bias.experts", {n, rows}, false, Init::zeros());
    if (bias.base_source() == BaseSource::parameter) l.bias_base = arena.add(name + "bias.base", {1, rows}, false, Init::zeros());
  }

  ExpertTensors<T, Space> tensors(const Linear& l) const { return {arena_->value(l.experts), base_of(l.base)}; }
  std::optional<ExpertTensors<T, Space>> bias_tensors(const Linear& l) const {
    return ExpertTensors<T, Space>{arena_->value(l.bias_experts), base_of(l.bias_base)};
  }
  ExpertGradients<T, Space> gradients(const Linear& l) const { return {arena_->gradient(l.experts), d_base_of(l.base)}; }
  std::optional<ExpertGradients<T, Space>> bias_gradients(const Linear& l) const {
    return ExpertGradients<T, Space>{arena_->gradient(l.bias_experts), d_base_of(l.bias_base)};
  }
  ConstMat<T, Space> base_of(const std::optional<std::size_t>& i) const { return i ? ConstMat<T, Space>(arena_->value(*i)) : ConstMat<T, Space>(); }
  Mat<T, Space> d_base_of(const std::optional<std::size_t>& i) const { return i ? arena_->gradient(*i) : Mat<T, Space>(); }

  MlpShape shape_;
  MlpPolicies<Policy> policies_;
  Router& fc_router_;
  Router& proj_router_;
  Linear fc_, proj_;
  std::size_t tokens_;
  std::string prefix_;
  const ParameterArena<T, Space>* arena_ = nullptr;
  Workspace<Space> fc_workspace_, proj_workspace_;
  Mat<T, Space> h_, a_, d_a_, d_h_;
};

}  // namespace camex::examples
