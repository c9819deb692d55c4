#pragma once
// What every camex test body uses: the execution space it is instantiated for, fresh random inputs with a seed
// that is printed (and can be pinned with CAMEX_TEST_SEED to replay a failure), host/device copies, and the
// helpers for error-path checks.
//
// One body per feature: a test source uses `Space` and is compiled once per backend, with CAMEX_TEST_SPACE set by
// tests/CMakeLists.txt; the ctest name ends in the backend (merge.soft_merge.Serial, ...).

#include <boost/test/unit_test.hpp>

#include <Eigen/Dense>
#include <Kokkos_Core.hpp>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>

#include "camex/core/error.hpp"
#include "camex/core/views.hpp"

#ifndef CAMEX_TEST_SPACE
#error "camex_test (cmake/camexTesting.cmake) compiles each test body with CAMEX_TEST_SPACE set to a Kokkos execution space"
#endif

namespace camex::testing {

using Space = CAMEX_TEST_SPACE;
inline constexpr const char* space_name = CAMEX_TEST_SPACE_NAME;

using HostMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A fresh seed per process unless CAMEX_TEST_SEED pins one; logged so a failure can be replayed.
inline std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    if (const char* pinned = std::getenv("CAMEX_TEST_SEED")) return static_cast<std::uint64_t>(std::strtoull(pinned, nullptr, 0));
    return (std::uint64_t{std::random_device{}()} << 32) | std::random_device{}();
  }();
  return seed;
}

/// Entries uniform on [lo, hi): never zeros, never a pattern a wrong index could satisfy by luck.
inline HostMatrix random_matrix(Eigen::Index rows, Eigen::Index cols, std::mt19937_64& gen, double lo = -1,
                                double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  HostMatrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = dist(gen);
  return m;
}

/// Copies a host matrix (rounded to T) into a new view in Space's memory.
template <class T>
Matrix<T, Space> to_device(const HostMatrix& m, const char* label = "test") {
  Matrix<T, Space> v(std::string(label), static_cast<std::size_t>(m.rows()), static_cast<std::size_t>(m.cols()));
  auto host = Kokkos::create_mirror_view(v);
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index c = 0; c < m.cols(); ++c) host(r, c) = static_cast<T>(m(r, c));
  Kokkos::deep_copy(v, host);
  return v;
}

/// The values a view holds, as a double matrix on the host.
template <RowMajorMatrix V>
HostMatrix to_host(const V& v) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, v);
  HostMatrix m(host.extent(0), host.extent(1));
  for (std::size_t r = 0; r < host.extent(0); ++r)
    for (std::size_t c = 0; c < host.extent(1); ++c) m(r, c) = static_cast<double>(host(r, c));
  return m;
}

/// The input a double-precision reference must see: the values the kernel actually received.
template <class T>
HostMatrix rounded(const HostMatrix& m) {
  return m.unaryExpr([](double x) { return static_cast<double>(static_cast<T>(x)); });
}

/// Unit roundoff of T: the relative error of one rounding.
template <class T>
constexpr double unit_roundoff = std::numeric_limits<T>::epsilon() / 2;

/// Runs `call`, requires it to throw camex::argument_error about `argument`, and requires the message to contain
/// each of `fragments` (so a test pins what the user reads, not only the type).
template <class Call>
void require_argument_error(Call&& call, const std::string& argument, std::initializer_list<std::string> fragments) {
  try {
    call();
  } catch (const argument_error& e) {
    BOOST_TEST(e.argument() == argument, "message: " << e.what());
    for (const auto& fragment : fragments)
      BOOST_TEST(std::string(e.what()).find(fragment) != std::string::npos,
                 "'" << fragment << "' missing from: " << e.what());
    return;
  }
  BOOST_FAIL("expected camex::argument_error about '" << argument << "', nothing was thrown");
}

}  // namespace camex::testing

/// Every test case logs the backend and the seed it ran with.
#define CAMEX_TEST_CONTEXT()                                                                           \
  BOOST_TEST_CONTEXT("backend " << ::camex::testing::space_name << ", CAMEX_TEST_SEED="               \
                                << ::camex::testing::test_seed())
