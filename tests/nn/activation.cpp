// The MLP activations (tanh GELU, exact GELU, ReLU) on both schedules: in double, the formulas and their
// derivatives by central differences; in float, within the error bound the float evaluation's roundings allow,
// measured against the double formulas at the same inputs; the backward's accumulate flag and in-place operands;
// the shape errors.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "camex/nn/activation.hpp"
#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

constexpr Activation activations[] = {Activation::gelu_tanh, Activation::gelu, Activation::relu};
constexpr Schedule schedules[] = {Schedule::tiled, Schedule::lane_per_parameter};
constexpr double sqrt_2_over_pi = 0.79788456080286535588, gelu_k = 0.044715;

double formula(Activation act, double h) {
  switch (act) {
    case Activation::relu: return std::max(h, 0.0);
    case Activation::gelu: return 0.5 * h * std::erfc(-h / std::sqrt(2.0));
    default: return 0.5 * h * (1 + std::tanh(sqrt_2_over_pi * (h + gelu_k * h * h * h)));
  }
}

/// The formula's derivative by central differences: with step 1e-6 the truncation h^2 f''' / 6 is below 1e-12 and
/// the rounding eps |f| / h about 1e-10 for |h| <= 10.
double central_derivative(Activation act, double h) {
  constexpr double step = 1e-6;
  return (formula(act, h + step) - formula(act, h - step)) / (2 * step);
}

/// Inputs of every regime: a sweep of [-12, 12] (the tails, where GELU's exponentials saturate, and the bend), then
/// random values of both signs with magnitudes in [0.1, 3), away from ReLU's kink where a central difference is not
/// its derivative.
HostMatrix inputs(std::mt19937_64& gen, bool with_kink) {
  HostMatrix h(61, 97);
  const Eigen::Index sweep = h.size() / 2;
  for (Eigen::Index i = 0; i < sweep; ++i) h.data()[i] = -12 + 24.0 * i / (sweep - 1);
  std::uniform_real_distribution<double> magnitude(0.1, 3);
  for (Eigen::Index i = sweep; i < h.size(); ++i) h.data()[i] = (i % 2 ? -1 : 1) * magnitude(gen);
  if (!with_kink)
    for (Eigen::Index i = 0; i < sweep; ++i)
      if (std::abs(h.data()[i]) < 1e-3) h.data()[i] = 0.5;
  return h;
}

template <class T>
HostMatrix forward(Activation act, Schedule schedule, const HostMatrix& h) {
  Matrix<T, Space> y("y", h.rows(), h.cols());
  activation_forward(Space{}, act, to_device<T>(h), y, schedule);
  return to_host(y);
}

/// d_hidden after the backward with d_activated = r, starting from d_hidden = `start`.
template <class T>
HostMatrix backward(Activation act, Schedule schedule, const HostMatrix& h, const HostMatrix& r, double start,
                    bool accumulate) {
  auto d_hidden = to_device<T>(HostMatrix::Constant(h.rows(), h.cols(), start));
  activation_backward(Space{}, act, to_device<T>(h), to_device<T>(r), d_hidden, accumulate, schedule);
  return to_host(d_hidden);
}

/// How far the kernel in double and `formula` may be apart at h, both rounding what is the same function. The
/// arguments of tanh and erfc carry a relative rounding error of a few eps, which those functions' tails amplify by
/// |a| (the tanh GELU's 2u = a) and h^2; and the formula's 1 + tanh u has an absolute error of about eps,
/// h eps / 2 in the value, where u is very negative and the sum cancels.
double double_bound(Activation act, double h, double value) {
  constexpr double eps = std::numeric_limits<double>::epsilon();
  if (act == Activation::relu) return 1e-300;
  if (act == Activation::gelu) return 4 * eps * (1 + h * h) * std::abs(value) + 1e-300;
  const double a = 2 * sqrt_2_over_pi * (h + gelu_k * h * h * h);
  return 4 * eps * (1 + std::abs(a)) * std::abs(value) + eps * std::abs(h) + 1e-300;
}

/// What the float evaluation may be off by at input h, for the value and for the derivative. The argument of the
/// exponential, a, is computed with a relative error of a few units u = 2^-24, which e^a turns into a relative
/// error of about u |a|; the other operations add a few u each. The derivatives' bound is relative to the sum of
/// their terms' magnitudes, since they cancel near GELU's minimum. Where the exponent passes 88 it saturates, and
/// the result is off by the terms of the saturated e^-88 instead (h e^-88 in the value).
struct FloatBound {
  double value, derivative;
};
FloatBound float_bound(Activation act, double h) {
  constexpr double u = unit_roundoff<float>;
  const double saturated = std::exp(-87.0), tiny = 1e-300;
  if (act == Activation::relu) return {0, 0};
  if (act == Activation::gelu) {
    // erfc(x) and e^(-h^2/2): relative sensitivity about h^2 to the argument's rounding.
    const double cdf = 0.5 * std::erfc(-h / std::sqrt(2.0)), density = std::exp(-h * h / 2) / std::sqrt(2 * M_PI);
    const double scale = 8 * u * (1 + h * h);
    return {scale * std::abs(h * cdf) + tiny, scale * (cdf + std::abs(h * density)) + saturated * std::abs(h)};
  }
  const double a = 2 * sqrt_2_over_pi * (h + gelu_k * h * h * h), e = std::exp(-a), s = 1 / (1 + e);
  const double scale = 8 * u * (1 + std::abs(a)), slope = std::abs(2 * h * sqrt_2_over_pi * (1 + 3 * gelu_k * h * h));
  return {scale * std::abs(h * s) + saturated * std::abs(h),
          2 * scale * (s + slope * e * s * s) + saturated * (1 + slope)};
}

/// check(act, schedule) for every activation on both schedules, in a context naming them.
template <class Check>
void for_every_activation_and_schedule(const Check& check) {
  for (const Activation act : activations)
    for (const Schedule schedule : schedules)
      BOOST_TEST_CONTEXT("activation " << static_cast<int>(act) << ", schedule " << static_cast<int>(schedule)) {
        check(act, schedule);
      }
}

}  // namespace

BOOST_AUTO_TEST_CASE(activation_in_double_is_the_formula) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for_every_activation_and_schedule([&](Activation act, Schedule schedule) {
      const HostMatrix h = inputs(gen, false), r = random_matrix(h.rows(), h.cols(), gen);
      const HostMatrix y = forward<double>(act, schedule, h), d = backward<double>(act, schedule, h, r, 0, false);
      double worst_value = 0, worst_derivative = 0;
      for (Eigen::Index i = 0; i < h.size(); ++i) {
        const double x = h.data()[i], expected = formula(act, x);
        worst_value = std::max(worst_value, std::abs(y.data()[i] - expected) / double_bound(act, x, expected));
        worst_derivative = std::max(worst_derivative, std::abs(d.data()[i] - central_derivative(act, x) * r.data()[i]));
      }
      BOOST_TEST(worst_value <= 1.0);
      // The central differences' own error is about 1e-10 (central_derivative).
      BOOST_TEST(worst_derivative <= 1e-8);
    });
  }
}

BOOST_AUTO_TEST_CASE(activation_in_float_within_its_rounding_bound) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for_every_activation_and_schedule([&](Activation act, Schedule schedule) {
      const HostMatrix h = rounded<float>(inputs(gen, true)), ones = HostMatrix::Ones(h.rows(), h.cols());
      const HostMatrix y = forward<float>(act, schedule, h), d = backward<float>(act, schedule, h, ones, 0, false);
      double worst_value = 0, worst_derivative = 0;
      for (Eigen::Index i = 0; i < h.size(); ++i) {
        const double x = h.data()[i];
        double exact_derivative;
        const double exact = activate(act, x, &exact_derivative);
        const FloatBound bound = float_bound(act, x);
        // Rounding the exact value to float is part of any float result: half a unit more.
        const double value_error = std::abs(y.data()[i] - exact) - unit_roundoff<float> * std::abs(exact);
        const double derivative_error =
            std::abs(d.data()[i] - exact_derivative) - unit_roundoff<float> * std::abs(exact_derivative);
        worst_value = std::max(worst_value, bound.value == 0 ? value_error : value_error / bound.value);
        worst_derivative =
            std::max(worst_derivative, bound.derivative == 0 ? derivative_error : derivative_error / bound.derivative);
      }
      BOOST_TEST_MESSAGE("float activation " << static_cast<int>(act) << ": worst error / bound " << worst_value
                                             << " (value), " << worst_derivative << " (derivative)");
      BOOST_TEST(worst_value <= 1.0);
      BOOST_TEST(worst_derivative <= 1.0);
    });
  }
}

BOOST_AUTO_TEST_CASE(activation_backward_accumulates_or_writes_in_place) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const Schedule schedule : schedules) {
      BOOST_TEST_CONTEXT("schedule " << static_cast<int>(schedule)) {
        const HostMatrix h = random_matrix(5, 11, gen, -3, 3), r = random_matrix(5, 11, gen);
        const HostMatrix written = backward<double>(Activation::gelu_tanh, schedule, h, r, 0.5, false);
        const HostMatrix added = backward<double>(Activation::gelu_tanh, schedule, h, r, 0.5, true);
        BOOST_TEST((added.array() - 0.5 - written.array()).abs().maxCoeff() <= 1e-15);
        // d_hidden and d_activated one array, as the merged FFN calls it.
        auto in_place = to_device<double>(r);
        activation_backward(Space{}, Activation::gelu_tanh, to_device<double>(h), in_place, in_place, false, schedule);
        BOOST_TEST((to_host(in_place) - written).cwiseAbs().maxCoeff() == 0.0);
        // activated and hidden one array.
        auto both = to_device<double>(h);
        activation_forward(Space{}, Activation::gelu_tanh, both, both, schedule);
        BOOST_TEST((to_host(both) - forward<double>(Activation::gelu_tanh, schedule, h)).cwiseAbs().maxCoeff() == 0.0);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(activation_shape_errors) {
  CAMEX_TEST_CONTEXT() {
    Matrix<float, Space> h("h", 4, 8), wrong("wrong", 4, 7);
    require_argument_error([&] { activation_forward(Space{}, Activation::gelu, h, wrong); }, "activated",
                           {"[4, 8]", "[4, 7]", "the shape of hidden"});
    require_argument_error([&] { activation_backward(Space{}, Activation::gelu, h, wrong, h, true); }, "d_activated",
                           {"[4, 8]", "[4, 7]"});
    require_argument_error([&] { activation_backward(Space{}, Activation::gelu, h, h, wrong, true); }, "d_hidden",
                           {"[4, 8]", "[4, 7]"});
  }
}
