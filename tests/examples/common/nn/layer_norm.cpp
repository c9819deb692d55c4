// LayerNorm: the forward in float and double against a double Eigen reference, the backward against central
// finite differences of every input, weight and bias entry, and the shape errors.
#include "common/nn/layer_norm.hpp"

#include "layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

HostMatrix reference(const HostMatrix& x, const HostMatrix& w, const HostMatrix& b) {
  HostMatrix y(x.rows(), x.cols());
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const double mean = x.row(t).mean();
    const double var = (x.row(t).array() - mean).square().mean();
    y.row(t) = ((x.row(t).array() - mean) / std::sqrt(var + examples::layer_norm_eps)) * w.row(0).array() + b.row(0).array();
  }
  return y;
}

template <class T>
HostMatrix forward(const std::vector<HostMatrix>& v, examples::Vec<T, Space>* mean = nullptr,
                   examples::Vec<T, Space>* rstd = nullptr) {
  const auto x = to_device<T>(v[0]);
  Matrix<T, Space> y("y", x.extent(0), x.extent(1));
  examples::Vec<T, Space> m("mean", x.extent(0)), r("rstd", x.extent(0));
  examples::layer_norm_forward(Space{}, x, to_device_vector<T>(v[1]), to_device_vector<T>(v[2]), y, m, r);
  if (mean) *mean = m;
  if (rstd) *rstd = r;
  return to_host(y);
}

}  // namespace

BOOST_AUTO_TEST_CASE(layer_norm_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    std::vector<Operand> operands{{"x", random_matrix(6, 37, gen, -2, 3)}, {"weight", random_matrix(1, 37, gen)},
                                  {"bias", random_matrix(1, 37, gen)}};
    const HostMatrix expected = reference(operands[0].value, operands[1].value, operands[2].value);
    std::vector<HostMatrix> values{operands[0].value, operands[1].value, operands[2].value};
    BOOST_TEST(relative_error(forward<double>(values), expected) <= 1e-13);
    // float: the statistics are summed in double, so each output carries a few roundings of its O(1) terms.
    BOOST_TEST(relative_error(forward<float>(values), expected) <= 1e-6);

    check_layer_gradients(
        operands, [](const std::vector<HostMatrix>& v) { return forward<double>(v); },
        [](const std::vector<HostMatrix>& v, const HostMatrix& r) {
          examples::Vec<double, Space> mean, rstd;
          forward<double>(v, &mean, &rstd);
          const auto x = to_device<double>(v[0]);
          auto d_x = to_device<double>(HostMatrix::Constant(v[0].rows(), v[0].cols(), 0.5));
          auto d_w = to_device_vector<double>(HostMatrix::Constant(1, v[1].cols(), 0.25));
          auto d_b = to_device_vector<double>(HostMatrix::Constant(1, v[1].cols(), -0.25));
          examples::layer_norm_backward(Space{}, x, to_device_vector<double>(v[1]), mean, rstd, to_device<double>(r), d_x,
                                        d_w, d_b);
          // The backward accumulates: subtract what the buffers held.
          return std::vector<HostMatrix>{to_host(d_x).array() - 0.5, vector_to_host(d_w).array() - 0.25,
                                         vector_to_host(d_b).array() + 0.25};
        },
        gen);
  }
}

BOOST_AUTO_TEST_CASE(layer_norm_shape_errors) {
  CAMEX_TEST_CONTEXT() {
    Matrix<float, Space> x("x", 4, 8), y("y", 4, 8), bad("bad", 4, 7);
    examples::Vec<float, Space> w("w", 8), short_w("w", 7), stats("stats", 4);
    require_argument_error([&] { examples::layer_norm_forward(Space{}, x, short_w, w, y, stats, stats); }, "weight",
                           {"8 entries", "given 7 entries"});
    require_argument_error([&] { examples::layer_norm_forward(Space{}, x, w, w, bad, stats, stats); }, "y",
                           {"[4, 8]", "[4, 7]"});
    require_argument_error([&] { examples::layer_norm_backward(Space{}, x, w, stats, stats, x, bad, w, w); }, "d_x",
                           {"[4, 8]", "[4, 7]"});
  }
}
