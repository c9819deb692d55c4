#pragma once
// Elementwise work over the entries of a rows x columns array, launched so each backend gets its good shape: on
// the host a work item is a block of whole rows and calls f(row, 0, columns), a loop the compiler vectorises over
// contiguous entries; elsewhere a lane is one entry and calls f(row, column, column + 1), so neighbouring lanes
// touch neighbouring addresses. One loop body, written once as f, serves both.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>

#include "camex/core/schedule.hpp"

namespace camex {

/// Entries a host work item covers, at least: enough that the work items' overhead is small beside them, few
/// enough that the threads share a layer's activations evenly.
inline constexpr std::size_t row_span_entries_per_work_item = 4096;

/// Calls f(row, begin, end) so that every (row, column) of a rows x columns array is in exactly one call's
/// [begin, end): whole rows on the host (Schedule::tiled), one column a call elsewhere (lane_per_parameter).
template <class ExecSpace, class F>
void for_each_row_span(const ExecSpace& space, const char* label, std::size_t rows, std::size_t columns, const F& f,
                       Schedule schedule = Schedule::automatic) {
  if (rows == 0 || columns == 0) return;
  if (detail::resolve<ExecSpace>(schedule) == Schedule::tiled) {
    const std::size_t block = std::max<std::size_t>(1, row_span_entries_per_work_item / columns);
    Kokkos::parallel_for(label, Kokkos::RangePolicy<ExecSpace>(space, 0, (rows + block - 1) / block),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const std::size_t end = (w + 1) * block < rows ? (w + 1) * block : rows;
                           for (std::size_t row = w * block; row < end; ++row) f(row, std::size_t{0}, columns);
                         });
    return;
  }
  Kokkos::parallel_for(label, Kokkos::RangePolicy<ExecSpace>(space, 0, rows * columns), KOKKOS_LAMBDA(std::size_t w) {
    f(w / columns, w % columns, w % columns + 1);
  });
}

}  // namespace camex
