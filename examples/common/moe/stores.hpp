#pragma once
// The library parts of a transformer's merged MLPs: per merged layer, four merge policies (fc and proj, weight and
// bias) and two routers (fc's on the MLP input, proj's on the activations, as in the CAMEx code), and the factory
// that assembles merged layer l from them. Independent policies hold one policy per (layer, tensor); dynamic
// merging chains each tensor kind through the merged layers (camex::DynamicChain), so its layers' policies belong
// to the chains. "Layer" here counts merged MLPs only: a model with dense MLPs in some blocks numbers its merged
// ones 0, 1, ... in block order.

#include <camex/camex.hpp>

#include <array>
#include <functional>
#include <memory>
#include <vector>

#include "common/nn/mlp.hpp"

namespace camex::examples {

/// What the merged MLPs of one model share.
struct MoeShape {
  std::size_t layers = 0;  ///< merged MLPs
  MlpShape mlp;
  RoutingLayout layout;
  std::size_t experts = 0;
};

enum class MlpTensor { fc_weight, fc_bias, proj_weight, proj_bias };
inline constexpr std::array<MlpTensor, 4> mlp_tensors{MlpTensor::fc_weight, MlpTensor::fc_bias, MlpTensor::proj_weight,
                                                      MlpTensor::proj_bias};

/// The merge problem of one MLP tensor: n experts over the layout's groups, [H, C], [H, 1], [C, H] or [C, 1].
inline MergeProblem mlp_problem(MlpTensor tensor, const MoeShape& shape) {
  const std::size_t c = shape.mlp.channels, h = shape.mlp.hidden, experts = shape.experts;
  const RoutingLayout& layout = shape.layout;
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
  IndependentPolicies(const MoeShape& shape, const Factory& make) {
    for (std::size_t l = 0; l < shape.layers; ++l)
      for (const MlpTensor t : mlp_tensors) policies_.push_back(make(t, mlp_problem(t, shape)));
  }
  Policy& at(std::size_t layer, MlpTensor tensor) { return *policies_.at(4 * layer + static_cast<std::size_t>(tensor)); }

 private:
  std::vector<std::unique_ptr<Policy>> policies_;
};

template <class T, class Space>
class ChainedPolicies {
 public:
  ChainedPolicies(const MoeShape& shape, const DynamicOptions& options) {
    for (const MlpTensor t : mlp_tensors)
      chains_.push_back(std::make_unique<DynamicChain<T, Space>>(shape.layers, mlp_problem(t, shape), options));
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

  MergedMlpFactory(const MoeShape& shape, Store& store, const RouterFactory& make_router,
                   const EvaluationOptions& evaluation = {})
      : shape_(shape), store_(store), evaluation_(evaluation) {
    for (std::size_t l = 0; l < shape.layers; ++l) {
      routers_.push_back(make_router(shape.mlp.channels, 2 * l));
      routers_.push_back(make_router(shape.mlp.hidden, 2 * l + 1));
    }
  }

  std::unique_ptr<Mlp> operator()(std::size_t l) {
    return std::make_unique<Mlp>(shape_.mlp, shape_.layout,
                                 MlpPolicies<Policy>{store_.at(l, MlpTensor::fc_weight), store_.at(l, MlpTensor::fc_bias),
                                                     store_.at(l, MlpTensor::proj_weight), store_.at(l, MlpTensor::proj_bias)},
                                 *routers_[2 * l], *routers_[2 * l + 1], evaluation_);
  }

 private:
  MoeShape shape_;
  Store& store_;
  EvaluationOptions evaluation_;
  std::vector<std::unique_ptr<Router>> routers_;
};

}  // namespace camex::examples
