// The MLP activations (tanh GELU, exact GELU, ReLU): forward against the formulas in double, backward against
// central finite differences, and the shape errors.
#include "common/nn/activation.hpp"

#include "layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

double formula(Activation act, double h) {
  switch (act) {
    case Activation::relu: return std::max(h, 0.0);
    case Activation::gelu: return 0.5 * h * (1 + std::erf(h / std::sqrt(2.0)));
    default: return 0.5 * h * (1 + std::tanh(std::sqrt(2 / M_PI) * (h + 0.044715 * h * h * h)));
  }
}

template <class T>
HostMatrix forward(Activation act, const HostMatrix& h) {
  Matrix<T, Space> y("y", h.rows(), h.cols());
  examples::activation_forward(Space{}, act, to_device<T>(h), y);
  return to_host(y);
}

}  // namespace

BOOST_AUTO_TEST_CASE(activation_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const Activation act : {Activation::gelu_tanh, Activation::gelu, Activation::relu}) {
      BOOST_TEST_CONTEXT("activation " << static_cast<int>(act)) {
        // Magnitudes in [0.1, 3): away from ReLU's kink, where a central difference is not its derivative.
        HostMatrix h = random_matrix(4, 9, gen, 0.1, 3);
        for (Eigen::Index i = 0; i < h.size(); i += 2) h.data()[i] = -h.data()[i];
        std::vector<Operand> operands{{"h", h}};
        BOOST_TEST(relative_error(forward<double>(act, h), h.unaryExpr([&](double v) { return formula(act, v); })) <= 1e-15);
        check_layer_gradients(
            operands, [&](const std::vector<HostMatrix>& v) { return forward<double>(act, v[0]); },
            [&](const std::vector<HostMatrix>& v, const HostMatrix& r) {
              auto d_h = to_device<double>(HostMatrix::Constant(v[0].rows(), v[0].cols(), 0.5));
              examples::activation_backward(Space{}, act, to_device<double>(v[0]), to_device<double>(r), d_h);
              return std::vector<HostMatrix>{to_host(d_h).array() - 0.5};
            },
            gen);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(activation_shape_errors) {
  CAMEX_TEST_CONTEXT() {
    Matrix<float, Space> h("h", 4, 8), wrong("wrong", 4, 7);
    require_argument_error([&] { examples::activation_forward(Space{}, Activation::gelu, h, wrong); }, "y",
                           {"[4, 8]", "[4, 7]"});
    require_argument_error([&] { examples::activation_backward(Space{}, Activation::gelu, h, h, wrong); }, "d_h",
                           {"[4, 8]", "[4, 7]"});
  }
}
