// The dense linear map: forward in float and double against Eigen in double, backward against central finite
// differences of x, the weight and the bias; the column sums its bias gradient takes; and the shape errors.
#include "common/nn/linear.hpp"

#include "layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

template <class T>
HostMatrix forward(const std::vector<HostMatrix>& v) {
  Matrix<T, Space> y("y", v[0].rows(), v[1].rows());
  examples::linear_forward(Space{}, to_device<T>(v[0]), to_device<T>(v[1]), to_device_vector<T>(v[2]), y);
  return to_host(y);
}

}  // namespace

BOOST_AUTO_TEST_CASE(linear_forward_and_backward) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    // 9 tokens, 13 -> 11: odd sizes, no multiple of a vector width.
    std::vector<Operand> operands{{"x", random_matrix(9, 13, gen)}, {"weight", random_matrix(11, 13, gen)},
                                  {"bias", random_matrix(1, 11, gen)}};
    // Each output is 13 products and 14 sums: at most (13 + 2) roundings of its magnitude sum |x||w| + |b|.
    const auto within_bound = [](const std::vector<HostMatrix>& v, const HostMatrix& got, double u) {
      const HostMatrix expected = (v[0] * v[1].transpose()).rowwise() + v[2].row(0);
      const HostMatrix magnitude = (v[0].cwiseAbs() * v[1].cwiseAbs().transpose()).rowwise() + v[2].row(0).cwiseAbs();
      return ((got - expected).cwiseAbs().array() / magnitude.array()).maxCoeff() <= 15 * u;
    };
    const std::vector<HostMatrix> values{operands[0].value, operands[1].value, operands[2].value};
    BOOST_TEST(within_bound(values, forward<double>(values), unit_roundoff<double>));
    const auto single = rounded_all<float>(values);
    BOOST_TEST(within_bound(single, forward<float>(single), unit_roundoff<float>));

    check_layer_gradients(
        operands, [](const std::vector<HostMatrix>& v) { return forward<double>(v); },
        [](const std::vector<HostMatrix>& v, const HostMatrix& r) {
          auto d_x = to_device<double>(HostMatrix::Constant(v[0].rows(), v[0].cols(), 0.5));
          auto d_w = to_device<double>(HostMatrix::Constant(v[1].rows(), v[1].cols(), 0.5));
          auto d_b = to_device_vector<double>(HostMatrix::Constant(1, v[1].rows(), 0.5));
          examples::linear_backward(Space{}, to_device<double>(v[0]), to_device<double>(v[1]), to_device<double>(r), d_x,
                                    d_w, d_b);
          return std::vector<HostMatrix>{to_host(d_x).array() - 0.5, to_host(d_w).array() - 0.5,
                                         vector_to_host(d_b).array() - 0.5};
        },
        gen);
  }
}

BOOST_AUTO_TEST_CASE(column_sums_add_every_row) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    // 37 columns: two whole blocks of examples::column_block and a part; 300 rows.
    const HostMatrix m = rounded<float>(random_matrix(300, 37, gen));
    auto sums = to_device_vector<float>(HostMatrix::Constant(1, 37, 0.5));
    examples::add_column_sums(Space{}, to_device<float>(m), sums);
    const HostMatrix expected = (m.colwise().sum().array() + 0.5).matrix();
    // Summed in double (error about 300 eps of the magnitudes, negligible), then rounded to float and added to
    // 0.5 in float: two roundings of the result's magnitude.
    const HostMatrix bound = (2 * unit_roundoff<float> * (m.cwiseAbs().colwise().sum().array() + 0.5)).matrix();
    BOOST_TEST(((vector_to_host(sums) - expected).cwiseAbs().array() <= bound.array()).all());
  }
}

BOOST_AUTO_TEST_CASE(linear_shape_errors) {
  CAMEX_TEST_CONTEXT() {
    Matrix<float, Space> x("x", 4, 8), w("w", 3, 8), y("y", 4, 3), wrong_w("w", 3, 7);
    examples::Vec<float, Space> b("b", 3), short_b("b", 2);
    require_argument_error([&] { examples::linear_forward(Space{}, x, wrong_w, b, y); }, "weight", {"[3, 8]", "[3, 7]"});
    require_argument_error([&] { examples::linear_forward(Space{}, x, w, short_b, y); }, "bias", {"3 entries", "2 entries"});
    require_argument_error([&] { examples::linear_backward(Space{}, x, w, y, x, wrong_w, b); }, "d_weight",
                           {"[3, 8]", "[3, 7]"});
    require_argument_error([&] { examples::add_column_sums(Space{}, x, b); }, "sums", {"8 entries", "3 entries"});
  }
}
