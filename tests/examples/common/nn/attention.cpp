// Multi-head self-attention, causal and unmasked: the forward in float and double against a per-head Eigen
// reference in double (softmax of the masked, scaled scores times v), the backward against central finite
// differences of every qkv entry (added to what d_qkv held), that no causal output depends on a later token and
// that every unmasked one does, and the errors.
#include "common/nn/attention.hpp"

#include "layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

constexpr int sequences = 2, context = 5, channels = 8, heads = 2;

/// The attention and its buffers (an arena of its own).
template <class T>
struct Attention {
  explicit Attention(examples::AttentionMask mask) : layer(sequences, context, channels, heads, mask) {
    layer.declare(arena);
    arena.allocate();
  }
  examples::SelfAttention<T, Space> layer;
  examples::ActivationArena<T, Space> arena;
};

HostMatrix reference(const HostMatrix& qkv, examples::AttentionMask mask) {
  const bool causal = mask == examples::AttentionMask::causal;
  const int d = channels / heads;
  HostMatrix y(sequences * context, channels);
  for (int s = 0; s < sequences; ++s)
    for (int h = 0; h < heads; ++h) {
      const HostMatrix q = qkv.block(s * context, h * d, context, d);
      const HostMatrix k = qkv.block(s * context, channels + h * d, context, d);
      const HostMatrix v = qkv.block(s * context, 2 * channels + h * d, context, d);
      HostMatrix a = q * k.transpose() / std::sqrt(double(d));
      for (int t = 0; t < context; ++t) {
        const int seen = causal ? t + 1 : context;
        const double top = a.row(t).head(seen).maxCoeff();
        a.row(t).head(seen) = (a.row(t).head(seen).array() - top).exp();
        a.row(t).head(seen) /= a.row(t).head(seen).sum();
        a.row(t).tail(context - seen).setZero();
      }
      y.block(s * context, h * d, context, d) = a * v;
    }
  return y;
}

template <class T>
HostMatrix forward(examples::SelfAttention<T, Space>& attention, const HostMatrix& qkv) {
  Matrix<T, Space> y("y", sequences * context, channels);
  attention.forward(Space{}, to_device<T>(qkv), y);
  return to_host(y);
}

}  // namespace

BOOST_AUTO_TEST_CASE(attention_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const auto mask : {examples::AttentionMask::causal, examples::AttentionMask::none}) {
      const bool causal = mask == examples::AttentionMask::causal;
      BOOST_TEST_CONTEXT((causal ? "causal" : "unmasked")) {
        std::vector<Operand> operands{{"qkv", random_matrix(sequences * context, 3 * channels, gen, -2, 2)}};
        Attention<double> attention(mask);
        Attention<float> single(mask);
        const HostMatrix expected = reference(operands[0].value, mask);
        BOOST_TEST(relative_error(forward(attention.layer, operands[0].value), expected) <= 1e-13);
        // float: inputs rounded, then products of 4 and sums of at most 5 terms of O(1) values, an exp and a division.
        BOOST_TEST(relative_error(forward(single.layer, rounded<float>(operands[0].value)),
                                  reference(rounded<float>(operands[0].value), mask)) <= 1e-5);

        // Moving the last token of sequence 0 changes nothing before it under the causal mask, every row without.
        HostMatrix moved = operands[0].value;
        moved.row(context - 1).setConstant(3.0);
        const HostMatrix before = forward(attention.layer, operands[0].value), after = forward(attention.layer, moved);
        const double earlier = (before.topRows(context - 1) - after.topRows(context - 1)).cwiseAbs().rowwise().maxCoeff().minCoeff();
        BOOST_TEST((causal ? (before.topRows(context - 1) - after.topRows(context - 1)).cwiseAbs().maxCoeff() == 0.0 : earlier > 0.0));
        BOOST_TEST((before.row(context - 1) - after.row(context - 1)).cwiseAbs().maxCoeff() > 0.0);

        check_layer_gradients(
            operands, [&](const std::vector<HostMatrix>& v) { return forward(attention.layer, v[0]); },
            [&](const std::vector<HostMatrix>& v, const HostMatrix& r) {
              forward(attention.layer, v[0]);
              const HostMatrix held = HostMatrix::Constant(v[0].rows(), v[0].cols(), 0.5);
              auto d_qkv = to_device<double>(held);
              attention.layer.backward(Space{}, to_device<double>(r), d_qkv);
              return std::vector<HostMatrix>{to_host(d_qkv) - held};  // added to what d_qkv held
            },
            gen);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(attention_errors) {
  CAMEX_TEST_CONTEXT() {
    require_argument_error([] { examples::SelfAttention<float, Space>(2, 4, 10, 3, examples::AttentionMask::none); },
                           "heads", {"a divisor of the width 10", "given 3"});
    examples::SelfAttention<float, Space> attention(2, 4, 8, 2, examples::AttentionMask::causal);
    Matrix<float, Space> qkv("qkv", 8, 24), y("y", 8, 8), wrong("wrong", 8, 16);
    require_argument_error([&] { attention.forward(Space{}, wrong, y); }, "qkv", {"[8, 24]", "[8, 16]"});
    require_argument_error([&] { attention.backward(Space{}, y, wrong); }, "d_qkv", {"[8, 24]", "[8, 16]"});
  }
}
