// The whole ViT, forward and backward, against central finite differences of its objective (cross-entropy plus
// the routers' balancing losses) in every entry of every trainable tensor: the arena's (patch embedding, class
// token, positions, blocks, head) and the library components' (curvature factors, router weights). Dense with a
// class token; TIES-CA routed per image with mean pooling, experts in the last block only (V-MoE's last-n); dynamic
// merging routed per token in every block. All in double on a tiny model (8 x 8 images, 4 x 4 patches) with every
// value drawn at random; each of the backward's groups final when the backward says so (tests/support/
// backward_groups_testing.hpp). Plus the model's argument errors.
//
// Tolerance: as for the LM (tests/examples/smoe_lm/model.cpp), 1e-6 of the tensor's largest difference quotient
// plus 1e-9 absolute.
#include "common/moe/stores.hpp"
#include "smoe_vit/model.hpp"

#include "backward_groups_testing.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <memory>
#include <random>

using namespace camex;
using namespace camex::examples;
using namespace camex::testing;

namespace {

VitShape tiny(Pooling pooling) {
  return {.grid = {.rows = 8, .cols = 8, .patch = 4}, .channels = 8, .heads = 2, .layers = 2, .hidden = 12, .classes = 3,
          .images = 2, .pooling = pooling};
}
constexpr std::size_t experts = 3;

Matrix<double, Space> random_images(const VitShape& s, std::mt19937_64& gen) {
  Matrix<double, Space> v("images", s.images, s.grid.pixels());
  auto host = Kokkos::create_mirror_view(v);
  std::normal_distribution<double> normal(0, 1);
  for (std::size_t i = 0; i < host.size(); ++i) host.data()[i] = normal(gen);
  Kokkos::deep_copy(v, host);
  return v;
}

Vit<double, Space>::Labels random_labels(const VitShape& s, std::mt19937_64& gen) {
  Kokkos::View<std::int32_t*, Space::memory_space> v("labels", s.images);
  auto host = Kokkos::create_mirror_view(v);
  for (std::size_t i = 0; i < host.extent(0); ++i) host(i) = static_cast<std::int32_t>(gen() % s.classes);
  Kokkos::deep_copy(v, host);
  return v;
}

void randomise(Vit<double, Space>& model, std::mt19937_64& gen) {
  std::uniform_real_distribution<double> u(-0.5, 0.5);
  for (auto& t : model.tensors()) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, t.flat.value);
    for (std::size_t k = 0; k < host.extent(0); ++k) host(k) += u(gen);
    Kokkos::deep_copy(t.flat.value, host);
  }
}

void check_model_gradients(Vit<double, Space>& model, std::mt19937_64& gen) {
  randomise(model, gen);
  const auto images = random_images(model.shape(), gen);
  const auto labels = random_labels(model.shape(), gen);
  const StepContext step{.seed = 11, .step = 3, .stream = 0, .training = true};
  const auto objective = [&] {
    const auto loss = model.forward(Space{}, step, images, labels);
    return loss.cross_entropy + loss.aux;
  };
  BOOST_TEST(std::isfinite(objective()));
  model.zero_gradients(Space{});
  backward_checking_groups(model, Space{});
  std::vector<std::vector<double>> analytic;
  for (auto& t : model.tensors()) analytic.push_back(host_values(t.flat.gradient));
  std::size_t index = 0;
  for (auto& t : model.tensors()) {
    BOOST_TEST_CONTEXT("d/d " << t.name) {
      GradientCheck check(objective);
      check.parameter(t.flat.value, analytic[index++]);
      BOOST_TEST(check.worst() <= 1e-6 * check.scale() + 1e-9, "worst " << check.worst() << ", scale " << check.scale());
    }
  }
}

MoeShape moe_shape(const VitShape& s, std::size_t merged, const RoutingLayout& layout) {
  return {.layers = merged, .mlp = {s.channels, s.hidden, s.activation}, .layout = layout, .experts = experts};
}

}  // namespace

BOOST_AUTO_TEST_CASE(dense_vit_gradients) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const VitShape shape = tiny(Pooling::class_token);
    Vit<double, Space> model(shape, [&](std::size_t) {
      return std::make_unique<DenseMlp<double, Space>>(MlpShape{shape.channels, shape.hidden, shape.activation}, shape.tokens());
    });
    check_model_gradients(model, gen);
  }
}

BOOST_AUTO_TEST_CASE(ties_ca_per_image_in_the_last_block) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    using Policy = TiesCA<double, Space>;
    using Router = NoisyTopKGate<double, Space>;
    const VitShape shape = tiny(Pooling::mean);
    const RoutingLayout layout{.sequences = shape.images, .length = shape.length(), .granularity = Granularity::sequence,
                               .segment = shape.length()};
    const MoeShape moe = moe_shape(shape, 1, layout);
    IndependentPolicies<Policy> policies(moe, [](MlpTensor, const MergeProblem& problem) {
      return std::make_unique<Policy>(problem, TiesMask{.options = {.density = 0.2}}, CurvatureOptions{.rank = 2});
    });
    MergedMlpFactory<double, Space, IndependentPolicies<Policy>, Policy, Router> make_merged(
        moe, policies, [&](std::size_t inputs, std::size_t index) {
          return std::make_unique<Router>(inputs, experts, layout, NoisyTopKOptions{.balance_coefficient = 0.1}, index);
        });
    Vit<double, Space> model(shape, [&](std::size_t l) -> std::unique_ptr<MlpLayer<double, Space>> {
      if (l + 1 == shape.layers) return make_merged(0);
      return std::make_unique<DenseMlp<double, Space>>(MlpShape{shape.channels, shape.hidden, shape.activation}, shape.tokens());
    });
    check_model_gradients(model, gen);
  }
}

BOOST_AUTO_TEST_CASE(dynamic_per_token) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    using Store = ChainedPolicies<double, Space>;
    using Policy = DynamicChain<double, Space>::Layer;
    using Router = NoisyTopKGate<double, Space>;
    const VitShape shape = tiny(Pooling::class_token);
    const RoutingLayout layout{.sequences = shape.tokens(), .length = 1, .granularity = Granularity::sequence, .segment = 1};
    const MoeShape moe = moe_shape(shape, shape.layers, layout);
    Store chains(moe, DynamicOptions{.gamma = 0.5, .alpha = 0.8, .curvature = {.rank = 2}});
    MergedMlpFactory<double, Space, Store, Policy, Router> make_merged(moe, chains, [&](std::size_t inputs, std::size_t index) {
      return std::make_unique<Router>(inputs, experts, layout, NoisyTopKOptions{.balance_coefficient = 0.1}, index);
    });
    Vit<double, Space> model(shape, [&](std::size_t l) -> std::unique_ptr<MlpLayer<double, Space>> { return make_merged(l); });
    check_model_gradients(model, gen);
  }
}

BOOST_AUTO_TEST_CASE(vit_errors) {
  CAMEX_TEST_CONTEXT() {
    VitShape shape = tiny(Pooling::class_token);
    const auto dense = [&](std::size_t) {
      return std::make_unique<DenseMlp<float, Space>>(MlpShape{shape.channels, shape.hidden, shape.activation}, shape.tokens());
    };
    VitShape odd = shape;
    odd.grid.patch = 3;
    require_argument_error([&] { Vit<float, Space>(odd, dense); }, "patch", {"a divisor of the image's 8 x 8", "given 3"});
    VitShape one_class = shape;
    one_class.classes = 1;
    require_argument_error([&] { Vit<float, Space>(one_class, dense); }, "shape.classes", {"at least 2 classes"});
    Vit<float, Space> model(shape, dense);
    Matrix<float, Space> images("images", 2, 63);
    Kokkos::View<std::int32_t*, Space::memory_space> labels("labels", 2);
    require_argument_error([&] { model.forward(Space{}, {}, images, labels); }, "images", {"[2, 64]", "[2, 63]"});
  }
}
