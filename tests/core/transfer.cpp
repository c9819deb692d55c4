// What a step exchanges between host and device memory (core/transfer.hpp): read_back returns the value a kernel
// left; write_by_argument writes any number of values, in batches of kernel arguments, with and without a host
// map; copy_matrix copies between strided views. Checked against the host values they must reproduce exactly.
#include "camex/core/transfer.hpp"

#include "testing.hpp"

#include <cstdint>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

BOOST_AUTO_TEST_CASE(read_back_returns_what_a_kernel_wrote) {
  Kokkos::View<std::uint64_t*, typename Space::memory_space> cells("cells", 3);
  std::uint64_t* cell = cells.data();
  Kokkos::parallel_for(Kokkos::RangePolicy<Space>(0, 3), KOKKOS_LAMBDA(std::size_t i) { cell[i] = 1000 + 7 * i; });
  for (std::size_t i = 0; i < 3; ++i) BOOST_TEST(read_back(Space{}, cells.data() + i) == 1000 + 7 * i);
}

BOOST_AUTO_TEST_CASE(write_by_argument_writes_every_value_in_batches) {
  std::mt19937_64 gen(test_seed());
  // Lengths around the batch of 32: none, part of one, exactly one, several and a remainder.
  for (const std::size_t count : {0, 1, 31, 32, 33, 70}) {
    BOOST_TEST_CONTEXT(count << " values") {
      std::vector<double> values(count);
      for (auto& v : values) v = std::uniform_real_distribution<double>(-1, 1)(gen);
      Kokkos::View<double*, typename Space::memory_space> out("out", count + 1);
      Kokkos::deep_copy(out, -7.0);
      write_by_argument(Space{}, std::span<const double>(values), out.data());
      const auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, out);
      for (std::size_t i = 0; i < count; ++i) BOOST_TEST(host(i) == values[i]);
      BOOST_TEST(host(count) == -7.0, "the entry after the last value is untouched");

      Kokkos::View<float*, typename Space::memory_space> mapped("mapped", count);
      write_by_argument(Space{}, std::span<const double>(values), mapped.data(), [](double v) { return 1 / (1 - v / 2); });
      const auto host_mapped = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, mapped);
      for (std::size_t i = 0; i < count; ++i) BOOST_TEST(host_mapped(i) == static_cast<float>(1 / (1 - values[i] / 2)));
    }
  }
}

BOOST_AUTO_TEST_CASE(copy_matrix_copies_between_strided_views) {
  std::mt19937_64 gen(test_seed());
  const HostMatrix source = random_matrix(5, 9, gen);
  const auto device = to_device<double>(source);
  Matrix<double, Space> target("target", 7, 9);
  Kokkos::deep_copy(target, 0.5);
  const std::pair<std::size_t, std::size_t> rows_in(1, 4), rows_out(3, 6), cols(2, 8);
  copy_matrix(Space{}, Kokkos::subview(target, rows_out, cols), Kokkos::subview(device, rows_in, cols));
  const HostMatrix got = to_host(target);
  for (Eigen::Index r = 0; r < 7; ++r)
    for (Eigen::Index c = 0; c < 9; ++c) {
      const bool inside = r >= 3 && r < 6 && c >= 2 && c < 8;
      BOOST_TEST(got(r, c) == (inside ? source(r - 2, c) : 0.5), "target(" << r << ", " << c << ")");
    }
}
