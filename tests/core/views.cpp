// The shape vocabulary and the error type every entry point reports through.
#include "camex/core/views.hpp"

#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

static_assert(RowMajorMatrix<Matrix<float, Space>>);
static_assert(RowMajorMatrix<Kokkos::View<const double**, Kokkos::LayoutRight, typename Space::memory_space>>);
static_assert(!RowMajorMatrix<Kokkos::View<float**, Kokkos::LayoutLeft, typename Space::memory_space>>,
              "column-major views are rejected: kernels stream along rows");
static_assert(!RowMajorMatrix<Kokkos::View<float*, typename Space::memory_space>>, "rank 1 is not a matrix");
static_assert(!RowMajorMatrix<float**>);
static_assert(MatrixOn<Matrix<float, Space>, Space>);
static_assert(!MutableMatrix<Kokkos::View<const float**, Kokkos::LayoutRight, typename Space::memory_space>>);

BOOST_AUTO_TEST_SUITE(views)

BOOST_AUTO_TEST_CASE(argument_error_names_its_parts) {
  const argument_error e("camex::f", "scores", "shape [2, 3]", "[2, 4]");
  BOOST_TEST(std::string(e.what()) == "camex::f: argument 'scores': expected shape [2, 3], given [2, 4]");
  BOOST_TEST(e.function() == "camex::f");
  BOOST_TEST(e.argument() == "scores");
  BOOST_TEST(e.expected() == "shape [2, 3]");
  BOOST_TEST(e.given() == "[2, 4]");
  const std::invalid_argument& as_std = e;  // catchable as the standard type too
  BOOST_TEST(std::string(as_std.what()).find("scores") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(shape_checks) {
  Matrix<float, Space> m("m", 2, 3);
  require_shape("f", "m", m, 2, 3, "[B, N]");
  require_argument_error([&] { require_shape("f", "m", m, 3, 2, "[B, N]"); }, "m",
                         {"f: argument 'm'", "expected shape [B, N] = [3, 2]", "given [2, 3]"});
  require_argument_error([&] { require_nonempty("f", "e", Matrix<float, Space>("e", 0, 3), "stack"); }, "e",
                         {"a non-empty stack", "given shape [0, 3]"});
  Matrix<float, Space> big("big", 4, 3);
  require_disjoint("f", "m", m, "big", big);
  require_argument_error(
      [&] { require_disjoint("f", "out", Kokkos::subview(big, Kokkos::make_pair(3, 4), Kokkos::ALL), "big", big); },
      "out", {"memory disjoint from 'big'"});
}

BOOST_AUTO_TEST_SUITE_END()
