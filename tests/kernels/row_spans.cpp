// for_each_row_span: on both schedules every entry of a rows x columns array is in exactly one call's span, the
// host schedule hands out whole rows, and an empty array launches nothing.
#include <boost/test/unit_test.hpp>

#include <cstddef>

#include "camex/kernels/row_spans.hpp"
#include "testing.hpp"

using namespace camex;
using namespace camex::testing;

BOOST_AUTO_TEST_CASE(row_spans_cover_every_entry_once) {
  CAMEX_TEST_CONTEXT() {
    // Shapes below, at and above one host work item's entries, and a single column.
    const std::size_t shapes[][2] = {{3, 7}, {1000, 5}, {2, row_span_entries_per_work_item + 3}, {5000, 1}};
    for (const Schedule schedule : {Schedule::tiled, Schedule::lane_per_parameter}) {
      for (const auto& shape : shapes) {
        const std::size_t rows = shape[0], columns = shape[1];
        BOOST_TEST_CONTEXT("schedule " << static_cast<int>(schedule) << ", " << rows << " x " << columns) {
          Kokkos::View<int**, Kokkos::LayoutRight, Space::memory_space> hits("hits", rows, columns);
          Kokkos::View<int*, Space::memory_space> partial_rows("partial rows", 1);
          for_each_row_span(
              Space{}, "test_row_spans", rows, columns,
              KOKKOS_LAMBDA(std::size_t row, std::size_t begin, std::size_t end) {
                if (begin != 0 || end != columns) Kokkos::atomic_add(&partial_rows(0), 1);
                for (std::size_t j = begin; j < end; ++j) Kokkos::atomic_add(&hits(row, j), 1);
              },
              schedule);
          auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, hits);
          std::size_t wrong = 0;
          for (std::size_t i = 0; i < rows; ++i)
            for (std::size_t j = 0; j < columns; ++j) wrong += host(i, j) != 1;
          BOOST_TEST(wrong == 0u);
          auto partial = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, partial_rows);
          if (schedule == Schedule::tiled)
            BOOST_TEST(partial(0) == 0);
          else
            BOOST_TEST(partial(0) == static_cast<int>(columns == 1 ? 0 : rows * columns));
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(row_spans_of_an_empty_array_call_nothing) {
  CAMEX_TEST_CONTEXT() {
    Kokkos::View<int*, Space::memory_space> calls("calls", 1);
    for (const Schedule schedule : {Schedule::tiled, Schedule::lane_per_parameter})
      for (const std::size_t empty : {0, 1})
        for_each_row_span(
            Space{}, "test_row_spans", empty == 0 ? 0 : 4, empty == 0 ? 4 : 0,
            KOKKOS_LAMBDA(std::size_t, std::size_t, std::size_t) { Kokkos::atomic_add(&calls(0), 1); }, schedule);
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, calls);
    BOOST_TEST(host(0) == 0);
  }
}
