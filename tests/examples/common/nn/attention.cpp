// Causal multi-head self-attention: the forward in float and double against a per-head Eigen reference in double
// (softmax of the masked, scaled scores times v), the backward against central finite differences of every qkv
// entry, that no output depends on a later token, and the errors.
#include "common/nn/attention.hpp"

#include "layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

constexpr int sequences = 2, context = 5, channels = 8, heads = 2;

HostMatrix reference(const HostMatrix& qkv) {
  const int d = channels / heads;
  HostMatrix y(sequences * context, channels);
  for (int s = 0; s < sequences; ++s)
    for (int h = 0; h < heads; ++h) {
      const HostMatrix q = qkv.block(s * context, h * d, context, d);
      const HostMatrix k = qkv.block(s * context, channels + h * d, context, d);
      const HostMatrix v = qkv.block(s * context, 2 * channels + h * d, context, d);
      HostMatrix a = q * k.transpose() / std::sqrt(double(d));
      for (int t = 0; t < context; ++t) {
        const double top = a.row(t).head(t + 1).maxCoeff();
        a.row(t).head(t + 1) = (a.row(t).head(t + 1).array() - top).exp();
        a.row(t).head(t + 1) /= a.row(t).head(t + 1).sum();
        a.row(t).tail(context - t - 1).setZero();
      }
      y.block(s * context, h * d, context, d) = a * v;
    }
  return y;
}

template <class T>
HostMatrix forward(examples::CausalSelfAttention<T, Space>& attention, const HostMatrix& qkv) {
  Matrix<T, Space> y("y", sequences * context, channels);
  attention.forward(Space{}, to_device<T>(qkv), y);
  return to_host(y);
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    std::vector<Operand> operands{{"qkv", random_matrix(sequences * context, 3 * channels, gen, -2, 2)}};
    examples::CausalSelfAttention<double, Space> attention(sequences, context, channels, heads);
    examples::CausalSelfAttention<float, Space> single(sequences, context, channels, heads);
    const HostMatrix expected = reference(operands[0].value);
    BOOST_TEST(relative_error(forward(attention, operands[0].value), expected) <= 1e-13);
    // float: inputs rounded, then products of 4 and sums of at most 5 terms of O(1) values, an exp and a division.
    BOOST_TEST(relative_error(forward(single, rounded<float>(operands[0].value)), reference(rounded<float>(operands[0].value))) <= 1e-5);

    // Causality: moving the last token of sequence 0 changes nothing before it.
    HostMatrix moved = operands[0].value;
    moved.row(context - 1).setConstant(3.0);
    const HostMatrix before = forward(attention, operands[0].value), after = forward(attention, moved);
    BOOST_TEST((before.topRows(context - 1) - after.topRows(context - 1)).cwiseAbs().maxCoeff() == 0.0);
    BOOST_TEST((before.row(context - 1) - after.row(context - 1)).cwiseAbs().maxCoeff() > 0.0);

    check_layer_gradients(
        operands, [&](const std::vector<HostMatrix>& v) { return forward(attention, v[0]); },
        [&](const std::vector<HostMatrix>& v, const HostMatrix& r) {
          forward(attention, v[0]);
          auto d_qkv = to_device<double>(HostMatrix::Constant(v[0].rows(), v[0].cols(), 0.5));
          attention.backward(Space{}, to_device<double>(r), d_qkv);
          return std::vector<HostMatrix>{to_host(d_qkv)};  // overwritten, not accumulated
        },
        gen);
  }
}

BOOST_AUTO_TEST_CASE(attention_errors) {
  CAMEX_TEST_CONTEXT() {
    require_argument_error([] { examples::CausalSelfAttention<float, Space>(2, 4, 10, 3); }, "heads",
                           {"a divisor of the width 10", "given 3"});
    examples::CausalSelfAttention<float, Space> attention(2, 4, 8, 2);
    Matrix<float, Space> qkv("qkv", 8, 24), y("y", 8, 8), wrong("wrong", 8, 16);
    require_argument_error([&] { attention.forward(Space{}, wrong, y); }, "qkv", {"[8, 24]", "[8, 16]"});
    require_argument_error([&] { attention.backward(Space{}, y, wrong); }, "d_qkv", {"[8, 24]", "[8, 16]"});
  }
}
