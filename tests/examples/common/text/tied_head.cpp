// The tied LM head and its cross-entropy: the loss and probabilities against log-sum-exp in double, the backward
// against central finite differences of the hidden states and the (tied) embedding table, and the errors.
#include "common/text/tied_head.hpp"

#include "../nn/layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

constexpr int tokens = 7, channels = 5, vocab = 11;

}  // namespace

BOOST_AUTO_TEST_CASE(tied_head_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    std::vector<std::int32_t> ids(tokens);
    for (auto& id : ids) id = static_cast<std::int32_t>(gen() % vocab);
    const auto targets = device_token_ids(ids);
    std::vector<Operand> operands{{"x", random_matrix(tokens, channels, gen, -2, 2)}, {"wte", random_matrix(vocab, channels, gen)}};
    Matrix<double, Space> probabilities("p", tokens, vocab);
    const Kokkos::View<double*, Space::memory_space> row_terms("row_terms", examples::cross_entropy_row_terms(tokens));
    const auto loss = [&](const std::vector<HostMatrix>& v) {
      HostMatrix out(1, 1);
      out(0, 0) = examples::tied_head_forward(Space{}, to_device<double>(v[0]), to_device<double>(v[1]), targets, probabilities,
                                                row_terms);
      return out;
    };
    const HostMatrix logits = operands[0].value * operands[1].value.transpose();
    double expected = 0;
    for (int t = 0; t < tokens; ++t) {
      const double top = logits.row(t).maxCoeff();
      expected += top + std::log((logits.row(t).array() - top).exp().sum()) - logits(t, ids[t]);
    }
    expected /= tokens;
    BOOST_TEST(std::abs(loss({operands[0].value, operands[1].value})(0, 0) - expected) <= 1e-14 * std::abs(expected));
    BOOST_TEST((to_host(probabilities).rowwise().sum().array() - 1).abs().maxCoeff() <= 1e-14);

    Matrix<float, Space> single("p", tokens, vocab);
    const double single_loss = examples::tied_head_forward(Space{}, to_device<float>(rounded<float>(operands[0].value)),
                                                           to_device<float>(rounded<float>(operands[1].value)), targets, single,
                                                           row_terms);
    // float logits: 5 products and sums of O(1) values, a few roundings each; the loss is summed in double.
    BOOST_TEST(std::abs(single_loss - expected) <= 1e-5 * std::max(1.0, std::abs(expected)));

    check_layer_gradients(
        operands, loss,
        [&](const std::vector<HostMatrix>& v, const HostMatrix& r) {
          loss(v);
          auto d_x = to_device<double>(HostMatrix::Constant(tokens, channels, 0.5));
          auto d_wte = to_device<double>(HostMatrix::Constant(vocab, channels, 0.5));
          examples::tied_head_backward(Space{}, to_device<double>(v[0]), to_device<double>(v[1]), targets, probabilities,
                                       r(0, 0), d_x, d_wte);
          return std::vector<HostMatrix>{to_host(d_x).array() - 0.5, to_host(d_wte).array() - 0.5};
        },
        gen);
  }
}

BOOST_AUTO_TEST_CASE(tied_head_errors) {
  CAMEX_TEST_CONTEXT() {
    const auto targets = device_token_ids({0, 1, 2});
    Matrix<float, Space> x("x", 3, channels), wte("wte", vocab, channels), p("p", 3, vocab), narrow("p", 3, vocab - 1),
        more("x", 4, channels);
    const Kokkos::View<double*, Space::memory_space> row_terms("row_terms", examples::cross_entropy_row_terms(4));
    require_argument_error([&] { examples::tied_head_forward(Space{}, x, wte, targets, narrow, row_terms); }, "probabilities",
                           {"[3, 11]", "[3, 10]"});
    require_argument_error([&] { examples::tied_head_forward(Space{}, more, wte, targets, p, row_terms); }, "targets",
                           {"4 entries", "given 3 entries"});
  }
}
