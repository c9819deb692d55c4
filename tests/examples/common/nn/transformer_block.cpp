// The pre-LN transformer block, causal and unmasked, with a dense MLP in double: its output is the composition of
// the layers it is made of (each tested against Eigen in its own test), its backward adds dL/dx to what d_x held
// and writes every parameter's gradient, all against central differences of f = sum(R .* y) (tolerance: see
// layer_testing.hpp), and the same draws give the same output twice.
#include "common/nn/transformer_block.hpp"

#include "layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

constexpr std::size_t sequences = 2, context = 3, channels = 4, heads = 2, hidden = 6;

struct Block {
  explicit Block(examples::AttentionMask mask)
      : block({.sequences = sequences, .context = context, .channels = channels, .heads = heads, .mask = mask},
              std::make_unique<examples::DenseMlp<double, Space>>(
                  examples::MlpShape{channels, hidden, Activation::gelu_tanh}, sequences * context),
              streams) {
    block.declare(parameters, activations, "h0.", 0.1);
    parameters.allocate();
    activations.allocate();
    block.bind(parameters);
  }
  DrawStreams streams;
  examples::TransformerBlock<double, Space> block;
  examples::ParameterArena<double, Space> parameters;
  examples::ActivationArena<double, Space> activations;
};

/// Every parameter at a random point, so no gradient vanishes by symmetry (norm gains away from 1, biases from 0).
void randomise(examples::ParameterArena<double, Space>& arena, std::mt19937_64& gen) {
  std::uniform_real_distribution<double> u(-0.6, 0.6);
  auto host = Kokkos::create_mirror_view(arena.values());
  for (std::size_t k = 0; k < host.extent(0); ++k) host(k) = u(gen);
  Kokkos::deep_copy(arena.values(), host);
}

HostMatrix forward(Block& b, const HostMatrix& x) {
  Matrix<double, Space> y("y", x.rows(), x.cols());
  const auto device_x = to_device<double>(x);
  b.block.forward(Space{}, StepContext{.seed = 1, .step = 0, .stream = 0, .training = true}, device_x, y);
  Kokkos::fence();
  return to_host(y);
}

}  // namespace

BOOST_AUTO_TEST_CASE(block_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const auto mask : {examples::AttentionMask::causal, examples::AttentionMask::none}) {
      BOOST_TEST_CONTEXT((mask == examples::AttentionMask::causal ? "causal" : "unmasked")) {
        Block b(mask);
        randomise(b.parameters, gen);
        const HostMatrix x = random_matrix(sequences * context, channels, gen);
        BOOST_TEST((forward(b, x) - forward(b, x)).cwiseAbs().maxCoeff() == 0.0);
        // Under the causal mask the first token's output ignores the others; without it, it does not. (The change
        // is not a constant over channels, which the LayerNorm would remove.)
        HostMatrix moved = x;
        moved.row(context - 1) += random_matrix(1, channels, gen);
        const double first = (forward(b, x).row(0) - forward(b, moved).row(0)).cwiseAbs().maxCoeff();
        if (mask == examples::AttentionMask::causal) BOOST_TEST(first == 0.0);
        else BOOST_TEST(first > 0.0);

        const HostMatrix r = random_matrix(sequences * context, channels, gen);
        const auto objective = [&](const HostMatrix& at) { return (forward(b, at).array() * r.array()).sum(); };
        forward(b, x);
        b.activations.zero_gradients(Space{});
        b.parameters.zero_gradients(Space{});
        const HostMatrix held = HostMatrix::Constant(x.rows(), x.cols(), 0.25);
        auto d_x = to_device<double>(held);
        b.block.backward(Space{}, to_device<double>(r), d_x);
        const HostMatrix analytic_x = to_host(d_x) - held;

        HostMatrix at = x;
        GradientCheck check_x([&] { return objective(at); });
        check_x.matrix(at, analytic_x);
        BOOST_TEST(check_x.scale() > 0.0);
        BOOST_TEST(check_x.worst() <= 1e-6 * check_x.scale(), "d/dx: worst " << check_x.worst() << ", scale " << check_x.scale());
        for (const auto& t : b.parameters.tensors()) {
          BOOST_TEST_CONTEXT("d/d " << t.name) {
            const auto analytic = host_values(t.flat.gradient);
            GradientCheck check([&] { return objective(x); });
            check.parameter(t.flat.value, analytic);
            BOOST_TEST(check.scale() > 0.0);
            BOOST_TEST(check.worst() <= 1e-6 * check.scale(), "worst " << check.worst() << ", scale " << check.scale());
          }
        }
      }
    }
  }
}
