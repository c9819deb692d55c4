#pragma once
// The transformer's MLP in its two forms, y = proj(act(fc(x))):
//
//   DenseMlp                        two dense linears (the dense baseline, and the model an SMoE is upcycled from)
//   MergedMlp<Policy, Router>       each linear a camex::MergedLinear with its own router, experts, base and policy
//                                   parameters (the CAMEx code's GPT-2 layer, docs/algorithms.md §3)
//
// Both declare their tensors in the model's arena (train/parameters.hpp) under a name prefix, bind to it once it
// is allocated, and keep what the backward needs from the last forward. forward returns the routers' auxiliary
// loss (0 for the dense MLP); backward overwrites d_x and writes the tensors' gradients (the merged layers
// overwrite theirs; the dense linears accumulate into the zeroed arena).

#include <camex/camex.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "activation.hpp"
#include "linear.hpp"
#include "tensor.hpp"
#include "common/train/parameters.hpp"

namespace camex::examples {

struct MlpShape {
  std::size_t channels = 0;  ///< C, the model width
  std::size_t hidden = 0;    ///< H, the hidden width (4 C in GPT-2)
  Activation activation = Activation::gelu_tanh;
};

template <class T, class Space>
class DenseMlp {
 public:
  static constexpr std::uint32_t random_streams = 0;  ///< it draws nothing
  DenseMlp(const MlpShape& shape, std::size_t tokens) : shape_(shape) {
    h_ = Mat<T, Space>("mlp.h", tokens, shape.hidden);
    a_ = Mat<T, Space>("mlp.a", tokens, shape.hidden);
    d_a_ = Mat<T, Space>("mlp.d_a", tokens, shape.hidden);
    d_h_ = Mat<T, Space>("mlp.d_h", tokens, shape.hidden);
  }

  /// GPT-2's initialisation: weights N(0, 0.02^2), the residual projection's N(0, proj_std^2), biases 0.
  void declare(ParameterArena<T, Space>& arena, const std::string& prefix, double proj_std) {
    fc_w_ = arena.add(prefix + "fc.weight", {shape_.hidden, shape_.channels}, true, Init::normal(0.02));
    fc_b_ = arena.add(prefix + "fc.bias", {shape_.hidden}, false, Init::zeros());
    proj_w_ = arena.add(prefix + "proj.weight", {shape_.channels, shape_.hidden}, true, Init::normal(proj_std));
    proj_b_ = arena.add(prefix + "proj.bias", {shape_.channels}, false, Init::zeros());
  }
  void bind(const ParameterArena<T, Space>& arena) { arena_ = &arena; }
  std::vector<NamedTensor<T, Space>> component_parameters() { return {}; }

  double forward(const Space& space, const StepContext&, const InMat<T, Space>& x, const Mat<T, Space>& y) {
    x_ = x;
    linear_forward(space, x, arena_->value(fc_w_), arena_->value_vector(fc_b_), h_);
    activation_forward(space, shape_.activation, h_, a_);
    linear_forward(space, a_, arena_->value(proj_w_), arena_->value_vector(proj_b_), y);
    return 0;
  }

  void backward(const Space& space, const InMat<T, Space>& d_y, const Mat<T, Space>& d_x) {
    Kokkos::deep_copy(space, d_a_, T(0));
    Kokkos::deep_copy(space, d_h_, T(0));
    Kokkos::deep_copy(space, d_x, T(0));
    linear_backward(space, a_, arena_->value(proj_w_), d_y, d_a_, arena_->gradient(proj_w_), arena_->gradient_vector(proj_b_));
    activation_backward(space, shape_.activation, h_, d_a_, d_h_);
    linear_backward(space, x_, arena_->value(fc_w_), d_h_, d_x, arena_->gradient(fc_w_), arena_->gradient_vector(fc_b_));
  }

  /// fc.weight, fc.bias, proj.weight, proj.bias: the tensors an SMoE model is upcycled from.
  std::vector<std::size_t> tensor_indices() const { return {fc_w_, fc_b_, proj_w_, proj_b_}; }

 private:
  MlpShape shape_;
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
class MergedMlp {
 public:
  /// fc's layer's, then proj's.
  static constexpr std::uint32_t random_streams = 2 * MergedLinear<Policy, Router>::random_streams;
  /// `policies` and `routers` (fc's, proj's) stay owned by the caller.
  MergedMlp(const MlpShape& shape, const RoutingLayout& layout, MlpPolicies<Policy> policies, Router& fc_router,
            Router& proj_router, const EvaluationOptions& evaluation = {})
      : shape_(shape),
        policies_(policies),
        fc_router_(fc_router),
        proj_router_(proj_router),
        fc_(MergedLinear<Policy, Router>(policies.fc_weight, &policies.fc_bias, fc_router, layout, evaluation)),
        proj_(MergedLinear<Policy, Router>(policies.proj_weight, &policies.proj_bias, proj_router, layout, evaluation)) {
    const std::size_t tokens = layout.tokens();
    h_ = Mat<T, Space>("mlp.h", tokens, shape.hidden);
    a_ = Mat<T, Space>("mlp.a", tokens, shape.hidden);
    d_a_ = Mat<T, Space>("mlp.d_a", tokens, shape.hidden);
    d_h_ = Mat<T, Space>("mlp.d_h", tokens, shape.hidden);
    fc_workspace_ = make_workspace<Space>(fc_.layer.workspace_bytes());
    proj_workspace_ = make_workspace<Space>(proj_.layer.workspace_bytes());
  }

  std::size_t experts() const { return fc_.layer.experts(); }

  /// Every expert and base drawn like the dense MLP's weights (independently), biases 0.
  void declare(ParameterArena<T, Space>& arena, const std::string& prefix, double proj_std) {
    const std::size_t n = experts(), c = shape_.channels, h = shape_.hidden;
    declare_linear(arena, prefix + "fc.", fc_, policies_.fc_weight, policies_.fc_bias, n, h, c, 0.02);
    declare_linear(arena, prefix + "proj.", proj_, policies_.proj_weight, policies_.proj_bias, n, c, h, proj_std);
    prefix_ = prefix;
  }
  void bind(const ParameterArena<T, Space>& arena) { arena_ = &arena; }

  /// The policies' and routers' own parameters (curvature factors, router weights), named under the prefix.
  std::vector<NamedTensor<T, Space>> component_parameters() {
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

  double forward(const Space& space, const StepContext& step, const InMat<T, Space>& x, const Mat<T, Space>& y) {
    double aux = fc_.layer.forward(space, step, x, {}, tensors(fc_), bias_tensors(fc_), h_, fc_workspace_);
    activation_forward(space, shape_.activation, h_, a_);
    aux += proj_.layer.forward(space, step.substream(MergedLinear<Policy, Router>::random_streams), a_, {}, tensors(proj_),
                               bias_tensors(proj_), y, proj_workspace_);
    return aux;
  }

  void backward(const Space& space, const InMat<T, Space>& d_y, const Mat<T, Space>& d_x) {
    proj_.layer.backward(space, d_y, 1.0, d_a_, gradients(proj_), bias_gradients(proj_), proj_workspace_);
    Kokkos::deep_copy(space, d_h_, T(0));
    activation_backward(space, shape_.activation, h_, d_a_, d_h_);
    fc_.layer.backward(space, d_h_, 1.0, d_x, gradients(fc_), bias_gradients(fc_), fc_workspace_);
  }

  /// Arena indices of {experts, base (or none)} for fc.weight, fc.bias, proj.weight, proj.bias.
  std::vector<std::pair<std::size_t, std::optional<std::size_t>>> tensor_indices() const {
    return {{fc_.experts, fc_.base}, {fc_.bias_experts, fc_.bias_base}, {proj_.experts, proj_.base},
            {proj_.bias_experts, proj_.bias_base}};
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
  std::string prefix_;
  const ParameterArena<T, Space>* arena_ = nullptr;
  Workspace<Space> fc_workspace_, proj_workspace_;
  Mat<T, Space> h_, a_, d_a_, d_h_;
};

}  // namespace camex::examples
