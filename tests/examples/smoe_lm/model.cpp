// The whole GPT, forward and backward, against central finite differences of its objective (cross-entropy plus the
// routers' balancing losses) in every entry of every trainable tensor: the arena's (embeddings, norms, attention,
// experts and bases) and the library components' (curvature factors, router weights). Dense, TIES-CA with the
// noisy top-k router, and dynamic merging (the base propagated through the layers), all in double on a tiny model
// with every value drawn at random; each of the backward's groups final when the backward says so
// (tests/support/backward_groups_testing.hpp). Plus the model's argument errors.
//
// Tolerance: as for the layers (tests/examples/common/nn/layer_testing.hpp), 1e-6 of the tensor's largest
// difference quotient, plus 1e-9 absolute for tensors whose gradient is tiny (the rounding of the O(1) objective
// over the step h = 1e-6 is about 1e-10).
#include "common/moe/stores.hpp"
#include "smoe_lm/model.hpp"

#include "backward_groups_testing.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <memory>
#include <random>

using namespace camex;
using namespace camex::examples;
using namespace camex::testing;

namespace {

const GptShape shape{.vocab = 7, .context = 4, .channels = 8, .heads = 2, .layers = 2, .hidden = 12, .sequences = 2};
// Routing per sequence: by causal segments the first segment routes on itself through a stop-gradient (docs/algorithms.md §2.3,
// tested in tests/route/groups.cpp), which central differences cannot reproduce.
const RoutingLayout layout{.sequences = 2, .length = 4, .granularity = Granularity::sequence};
constexpr std::size_t experts = 3;
const MoeShape moe{.layers = shape.layers, .mlp = {shape.channels, shape.hidden, shape.activation}, .layout = layout,
                   .experts = experts};

TokenIds<Space> random_tokens(std::mt19937_64& gen) {
  Kokkos::View<std::int32_t*, Space::memory_space> v("tokens", shape.tokens());
  auto host = Kokkos::create_mirror_view(v);
  for (std::size_t i = 0; i < host.extent(0); ++i) host(i) = static_cast<std::int32_t>(gen() % shape.vocab);
  Kokkos::deep_copy(v, host);
  return v;
}

/// Every trainable value moved to a random point, so no gradient is zero or symmetric by construction.
template <class Model>
void randomise(Model& model, std::mt19937_64& gen) {
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  for (auto& t : model.tensors()) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, t.flat.value);
    for (std::size_t k = 0; k < host.extent(0); ++k) host(k) += u(gen);
    Kokkos::deep_copy(t.flat.value, host);
  }
}

template <class Model>
void check_model_gradients(Model& model, std::mt19937_64& gen) {
  randomise(model, gen);
  const auto inputs = random_tokens(gen), targets = random_tokens(gen);
  const StepContext step{.seed = 11, .step = 3, .stream = 0, .training = true};
  const auto objective = [&] {
    const auto loss = model.forward(Space{}, step, inputs, targets);
    return loss.cross_entropy + loss.aux;
  };
  BOOST_TEST(std::isfinite(objective()));
  model.zero_gradients(Space{});
  backward_checking_groups(model, Space{});
  std::vector<std::pair<std::string, std::vector<double>>> analytic;
  for (auto& t : model.tensors()) analytic.emplace_back(t.name, host_values(t.flat.gradient));
  std::size_t index = 0;
  for (auto& t : model.tensors()) {
    BOOST_TEST_CONTEXT("d/d " << t.name) {
      GradientCheck check(objective);
      check.parameter(t.flat.value, analytic[index++].second);
      BOOST_TEST(check.worst() <= 1e-6 * check.scale() + 1e-9, "worst " << check.worst() << ", scale " << check.scale());
    }
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(dense_gpt_gradients) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    Gpt<double, Space> model(shape, [](std::size_t) {
      return std::make_unique<DenseMlp<double, Space>>(MlpShape{shape.channels, shape.hidden, shape.activation}, shape.tokens());
    });
    check_model_gradients(model, gen);
  }
}

BOOST_AUTO_TEST_CASE(ties_ca_gpt_gradients) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    using Policy = TiesCA<double, Space>;
    using Router = NoisyTopKGate<double, Space>;
    IndependentPolicies<Policy> policies(moe, [](MlpTensor, const MergeProblem& problem) {
      return std::make_unique<Policy>(problem, TiesMask{.options = {.density = 0.2}}, CurvatureOptions{.rank = 2});
    });
    MergedMlpFactory<double, Space, IndependentPolicies<Policy>, Policy, Router> make_mlp(
        moe, policies, [](std::size_t inputs, std::size_t index) {
          return std::make_unique<Router>(inputs, experts, layout, NoisyTopKOptions{.balance_coefficient = 0.1}, index);
        });
    Gpt<double, Space> model(shape, [&](std::size_t l) -> std::unique_ptr<MlpLayer<double, Space>> { return make_mlp(l); });
    check_model_gradients(model, gen);
  }
}

BOOST_AUTO_TEST_CASE(dynamic_gpt_gradients) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    using Store = ChainedPolicies<double, Space>;
    using Policy = DynamicChain<double, Space>::Layer;
    using Router = NoisyTopKGate<double, Space>;
    Store chains(moe, DynamicOptions{.gamma = 0.5, .alpha = 0.8, .curvature = {.rank = 2}});
    MergedMlpFactory<double, Space, Store, Policy, Router> make_mlp(moe, chains, [](std::size_t inputs, std::size_t index) {
      return std::make_unique<Router>(inputs, experts, layout, NoisyTopKOptions{.balance_coefficient = 0.1}, index);
    });
    Gpt<double, Space> model(shape, [&](std::size_t l) -> std::unique_ptr<MlpLayer<double, Space>> { return make_mlp(l); });
    check_model_gradients(model, gen);
  }
}

BOOST_AUTO_TEST_CASE(gpt_errors) {
  CAMEX_TEST_CONTEXT() {
    const auto dense = [](std::size_t) {
      return std::make_unique<DenseMlp<float, Space>>(MlpShape{shape.channels, shape.hidden, shape.activation}, shape.tokens());
    };
    GptShape no_layers = shape;
    no_layers.layers = 0;
    require_argument_error([&] { Gpt<float, Space>(no_layers, dense); }, "shape.layers",
                           {"at least one layer"});
    GptShape odd_heads = shape;
    odd_heads.heads = 3;
    require_argument_error([&] { Gpt<float, Space>(odd_heads, dense); }, "heads",
                           {"a divisor of the width 8", "given 3"});
    Gpt<float, Space> model(shape, dense);
    Kokkos::View<std::int32_t*, Space::memory_space> short_tokens("tokens", shape.tokens() - 1), tokens("tokens", shape.tokens());
    require_argument_error([&] { model.forward(Space{}, {}, short_tokens, tokens); }, "inputs",
                           {"8 entries (sequences x context)", "given 7 entries"});
  }
}
