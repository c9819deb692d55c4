#pragma once
// The library parts of a merged GPT's MLPs: per layer, four merge policies (fc and proj, weight and bias) and two
// routers (fc's on the MLP input, proj's on the activations, as in the CAMEx code), and the MlpFactory the model
// calls to assemble layer l from them. Independent policies hold one policy per (layer, tensor); dynamic merging
// chains each tensor kind through the layers (camex::DynamicChain), so its layers' policies belong to the chains.

#include <camex/camex.hpp>

#include <array>
#include <functional>
#include <memory>
#include <vector>

#include "common/nn/mlp.hpp"
#include "model.hpp"

namespace camex::examples {

enum class MlpTensor { fc_weight, fc_bias, proj_weight, proj_bias };
inline constexpr std::array<MlpTensor, 4> mlp_tensors{MlpTensor::fc_weight, MlpTensor::fc_bias, MlpTensor::proj_weight,
                                                      MlpTensor::proj_bias};

/// The merge problem of one MLP tensor: n experts over the layout's groups, [H, C], [H, 1], [C, H] or [C, 1].
inline MergeProblem mlp_problem(MlpTensor tensor, const GptShape& shape, std::size_t experts, const RoutingLayout& layout) {
  const std::size_t c = shape.channels, h = shape.hidden;
  switch (tensor) {
    case MlpTensor::fc_weight: return layer_problem(layout, experts, {h, c});
    case MlpTensor::fc_bias: return layer_problem(layout, experts, {h, 1});
    case MlpTensor::proj_weight: return layer_problem(layout, experts, {c, h});
    default: return layer_problem(layout, experts, {c, 1});
  }
}

template <class Policy>
class IndependentPolicies {
 public:
  using Factory = std::function<std::unique_ptr<Policy>(MlpTensor, const MergeProblem&)>;
  IndependentPolicies(const GptShape& shape, std::size_t experts, const RoutingLayout& layout, const Factory& make) {
    for (std::size_t l = 0; l < shape.layers; ++l)
      for (const MlpTensor t : mlp_tensors) policies_.push_back(make(t, mlp_problem(t, shape, experts, layout)));
  }
  Policy& at(std::size_t layer, MlpTensor tensor) { return *policies_.at(4 * layer + static_cast<std::size_t>(tensor)); }

 private:
  std::vector<std::unique_ptr<Policy>> policies_;
};

template <class T, class Space>
class ChainedPolicies {
 public:
  ChainedPolicies(const GptShape& shape, std::size_t experts, const RoutingLayout& layout, const DynamicOptions& options) {
    for (const MlpTensor t : mlp_tensors)
      chains_.push_back(std::make_unique<DynamicChain<T, Space>>(shape.layers, mlp_problem(t, shape, experts, layout), options));
  }
  typename DynamicChain<T, Space>::Layer& at(std::size_t layer, MlpTensor tensor) {
    return chains_.at(static_cast<std::size_t>(tensor))->layer(layer);
  }

 private:
  std::vector<std::unique_ptr<DynamicChain<T, Space>>> chains_;
};

/// Builds each layer's MergedMlp from `Store`'s policies, and owns the routers they use (two per layer).
template <class T, class Space, class Store, class Policy, class Router>
class MergedMlpFactory {
 public:
  using Mlp = MergedMlp<T, Space, Policy, Router>;
  using RouterFactory = std::function<std::unique_ptr<Router>(std::size_t inputs, std::size_t layer_index)>;

  MergedMlpFactory(const GptShape& shape, const RoutingLayout& layout, Store& store, const RouterFactory& make_router,
                const EvaluationOptions& evaluation = {})
      : shape_(shape), layout_(layout), store_(store), evaluation_(evaluation) {
    for (std::size_t l = 0; l < shape.layers; ++l) {
      routers_.push_back(make_router(shape.channels, 2 * l));
      routers_.push_back(make_router(shape.hidden, 2 * l + 1));
    }
  }

  std::unique_ptr<Mlp> operator()(std::size_t l) {
    const MlpShape mlp{shape_.channels, shape_.hidden, shape_.activation};
    return std::make_unique<Mlp>(mlp, layout_,
                                 MlpPolicies<Policy>{store_.at(l, MlpTensor::fc_weight), store_.at(l, MlpTensor::fc_bias),
                                                     store_.at(l, MlpTensor::proj_weight), store_.at(l, MlpTensor::proj_bias)},
                                 *routers_[2 * l], *routers_[2 * l + 1], evaluation_);
  }

 private:
  GptShape shape_;
  RoutingLayout layout_;
  Store& store_;
  EvaluationOptions evaluation_;
  std::vector<std::unique_ptr<Router>> routers_;
};

}  // namespace camex::examples
