#pragma once
// One training step and one evaluation step of a merged layer, written only to be compiled: nvcc instantiates
// every kernel a layer launches (the router's, the policy's prepare, merge and backward, the layer's GEMMs), which
// is what can break under nvcc and not under the host compiler. Never run; the sizes are placeholders.
#include <camex/camex.hpp>

#include <optional>

namespace camex::cuda_check {

using Space = Kokkos::DefaultExecutionSpace;

inline constexpr RoutingLayout segments{.sequences = 2, .length = 8, .granularity = Granularity::causal_segment, .segment = 4};

template <class Layer>
void linear_steps(Layer& layer) {
  using T = typename Layer::scalar_type;
  const std::size_t tokens = layer.layout().tokens(), n = layer.experts(), in = layer.inputs(), out = layer.outputs();
  const auto ws = make_workspace<Space>(layer.workspace_bytes());
  Matrix<T, Space> x("x", tokens, in), y("y", tokens, out), d_x("d_x", tokens, in);
  Matrix<T, Space> ew("ew", n, out * in), bw("bw", 1, out * in), eb("eb", n, out), bb("bb", 1, out);
  typename Layer::PaddingFlags padding;
  for (const bool training : {false, true}) {
    const StepContext step{.seed = 1, .step = 1, .stream = 0, .training = training};
    const double aux = layer.forward(Space{}, step, x, padding, {ew, bw}, ExpertTensors<T, Space>{eb, bb}, y, ws);
    layer.backward(Space{}, y, aux, d_x, {ew, bw}, ExpertGradients<T, Space>{eb, bb}, ws);
  }
}

/// A MergedLinear with weight and bias policies of type Policy built by make(shape), under `router`.
template <class Policy, class Router, class Make>
void merged_linear(Router& router, const Make& make) {
  const std::size_t in = 4, out = 6;
  Policy weights = make(TensorShape{out, in}), bias = make(TensorShape{out, 1});
  MergedLinear layer(weights, &bias, router, segments);
  linear_steps(layer);
}

template <class Scalar>
NoisyTopKGate<Scalar, Space> noisy_top_k(std::size_t experts) {
  return NoisyTopKGate<Scalar, Space>(4, experts, segments, {.k = 2});
}

inline MergeProblem problem(std::size_t experts, const TensorShape& shape) { return layer_problem(segments, experts, shape); }

}  // namespace camex::cuda_check
