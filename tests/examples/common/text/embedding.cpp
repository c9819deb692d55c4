// Token and position embeddings: the forward against the table lookup in double, the backward (which collects
// repeated tokens' rows) against central finite differences of both tables, and the errors.
#include "common/text/embedding.hpp"

#include "../nn/layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

constexpr int vocab = 5, context = 4, channels = 6, sequences = 3;

template <class T>
HostMatrix forward(const examples::TokenIds<Space>& tokens, const std::vector<HostMatrix>& v) {
  Matrix<T, Space> out("out", tokens.extent(0), channels);
  examples::embedding_forward(Space{}, tokens, to_device<T>(v[0]), to_device<T>(v[1]), out);
  return to_host(out);
}

}  // namespace

BOOST_AUTO_TEST_CASE(embedding_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    // 12 tokens over a vocabulary of 5: repeats are certain.
    std::vector<std::int32_t> ids(sequences * context);
    for (auto& id : ids) id = static_cast<std::int32_t>(gen() % vocab);
    const auto tokens = device_token_ids(ids);
    std::vector<Operand> operands{{"wte", random_matrix(vocab, channels, gen)}, {"wpe", random_matrix(context, channels, gen)}};
    HostMatrix expected(ids.size(), channels);
    for (std::size_t t = 0; t < ids.size(); ++t)
      expected.row(t) = operands[0].value.row(ids[t]) + operands[1].value.row(t % context);
    BOOST_TEST(relative_error(forward<double>(tokens, {operands[0].value, operands[1].value}), expected) == 0.0);

    check_layer_gradients(
        operands, [&](const std::vector<HostMatrix>& v) { return forward<double>(tokens, v); },
        [&](const std::vector<HostMatrix>& v, const HostMatrix& r) {
          auto d_wte = to_device<double>(HostMatrix::Constant(v[0].rows(), v[0].cols(), 0.5));
          auto d_wpe = to_device<double>(HostMatrix::Constant(v[1].rows(), v[1].cols(), 0.5));
          examples::embedding_backward(Space{}, tokens, to_device<double>(r), d_wte, d_wpe);
          return std::vector<HostMatrix>{to_host(d_wte).array() - 0.5, to_host(d_wpe).array() - 0.5};
        },
        gen);
  }
}

BOOST_AUTO_TEST_CASE(embedding_errors) {
  CAMEX_TEST_CONTEXT() {
    const auto tokens = device_token_ids({0, 1, 2, 3, 4, 0, 1});  // 7 tokens: not whole sequences of 4
    Matrix<float, Space> wte("wte", vocab, channels), wpe("wpe", context, channels), out("out", 7, channels),
        narrow("wpe", context, channels - 1);
    require_argument_error([&] { examples::embedding_forward(Space{}, tokens, wte, wpe, out); }, "tokens",
                           {"a whole number of sequences of 4 tokens", "given 7 tokens"});
    require_argument_error([&] { examples::embedding_forward(Space{}, tokens, wte, narrow, out); }, "wpe",
                           {"[4, 6]", "[4, 5]"});
  }
}
