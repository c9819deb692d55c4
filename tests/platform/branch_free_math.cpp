// The branch-free float exponential: within 1.5 units in the last place of e^x over [-87, 88], computed on the test's
// backend (so device code is measured too), against double-precision exp rounded to float; saturating outside
// that range; NaN in, NaN out.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "camex/platform/branch_free_math.hpp"
#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

/// branch_free_exp of each argument, evaluated in Space.
std::vector<float> exp_on_space(const std::vector<float>& arguments) {
  Kokkos::View<float*, Space::memory_space> x("x", arguments.size()), y("y", arguments.size());
  auto host = Kokkos::create_mirror_view(x);
  for (std::size_t i = 0; i < arguments.size(); ++i) host(i) = arguments[i];
  Kokkos::deep_copy(x, host);
  Kokkos::parallel_for("test_exp", Kokkos::RangePolicy<Space>(0, arguments.size()),
                       KOKKOS_LAMBDA(std::size_t i) { y(i) = math::branch_free_exp(x(i)); });
  Kokkos::deep_copy(host, y);
  return {host.data(), host.data() + host.extent(0)};
}

/// |y - e^x| in units of the last place of e^x rounded to float.
double ulps(float x, float y) {
  const double exact = std::exp(static_cast<double>(x));
  const float rounded = static_cast<float>(exact);
  const double ulp = std::nextafter(rounded, std::numeric_limits<float>::infinity()) - rounded;
  return std::abs(y - exact) / ulp;
}

}  // namespace

BOOST_AUTO_TEST_CASE(branch_free_exp_within_one_and_a_half_ulp) {
  CAMEX_TEST_CONTEXT() {
    // Every 241st float of [-87, 88] (about 4 million arguments, every binade),
    // and the neighbourhood of 0, where r is the argument itself.
    std::vector<float> arguments;
    for (float x = -87.0f; x <= 88.0f;) {
      arguments.push_back(x);
      for (int step = 0; step < 241; ++step) x = std::nextafter(x, 100.0f);
    }
    for (float x = -1e-6f; x <= 1e-6f; x += 1e-9f) arguments.push_back(x);
    const std::vector<float> values = exp_on_space(arguments);
    double worst = 0;
    float worst_at = 0;
    for (std::size_t i = 0; i < arguments.size(); ++i)
      if (const double e = ulps(arguments[i], values[i]); !(e <= worst)) worst = e, worst_at = arguments[i];
    BOOST_TEST_MESSAGE("branch_free_exp: worst " << worst << " ulp at x = " << worst_at);
    BOOST_TEST(worst <= 1.5);
  }
}

BOOST_AUTO_TEST_CASE(branch_free_exp_saturates_and_keeps_nan) {
  CAMEX_TEST_CONTEXT() {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    const std::vector<float> values = exp_on_space({-1000.0f, -87.0f, 88.0f, 1000.0f, -inf, inf, nan});
    BOOST_TEST(values[0] == values[1]);
    BOOST_TEST(values[1] > 0.0f);
    BOOST_TEST(values[2] == values[3]);
    BOOST_TEST(std::isfinite(values[3]));
    BOOST_TEST(values[4] == values[1]);
    BOOST_TEST(values[5] == values[2]);
    BOOST_TEST(std::isnan(values[6]));
  }
}
