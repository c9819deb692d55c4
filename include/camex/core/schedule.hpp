#pragma once
// How a kernel maps work onto an execution space (kernels/row_combination.hpp has the two schedules).

#include <Kokkos_Core.hpp>

namespace camex {

/// `automatic` picks `tiled` for spaces that run on the host and `lane_per_parameter` for the others; the explicit
/// choices exist so tests can run both everywhere.
enum class Schedule { automatic, tiled, lane_per_parameter };

namespace detail {

template <class ExecSpace>
constexpr Schedule resolve(Schedule s) {
  if (s != Schedule::automatic) return s;
  return static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible) ? Schedule::tiled
                                                                                                : Schedule::lane_per_parameter;
}

}  // namespace detail
}  // namespace camex
