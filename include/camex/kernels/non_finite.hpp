#pragma once
// Finding non-finite operands inside passes that already read them. A pass carries a NonFiniteScan and hands it
// each run of values it has just read or computed (in registers or L1): the check is one vectorised comparison
// per value, and only a run that holds a bad value pays for locating it. The scan keeps the smallest position met
// in one device cell, so a caller reads back one number after the pass, whatever the backend.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <limits>

#include "camex/core/transfer.hpp"
#include "camex/core/views.hpp"
#include "camex/platform/vectorize.hpp"

namespace camex::detail {

inline constexpr std::size_t no_position = std::numeric_limits<std::size_t>::max();

/// Records the smallest position at which a pass met a NaN or an infinity; a null cell checks nothing.
struct NonFiniteScan {
  std::size_t* first = nullptr;

  KOKKOS_INLINE_FUNCTION explicit operator bool() const { return first != nullptr; }

  /// Looks at x[0, len), whose entry q sits at `position + q`. x - x is 0 for every finite x and NaN otherwise,
  /// a test the compiler vectorises (std::isfinite is a call on some targets).
  template <class T>
  KOKKOS_INLINE_FUNCTION void check(const T* x, int len, std::size_t position) const {
    int bad = 0;
    CAMEX_IVDEP
    for (int q = 0; q < len; ++q) bad |= static_cast<int>(x[q] - x[q] != T(0));
    if (!bad) return;
    for (int q = 0; q < len; ++q)
      if (x[q] - x[q] != T(0)) {
        Kokkos::atomic_fetch_min(first, position + static_cast<std::size_t>(q));
        return;
      }
  }
};

/// A pass of its own for operands no other pass reads: scans rows [0, rows) of `data` (row r starting at
/// data + r * stride, `length` entries each), recording position offset + r * length + p. On host spaces a thread
/// takes a long run of one row, which the hardware prefetcher streams; short pieces of every row in turn, as a
/// merge tile reads them, leave it starved (docs/performance.md).
template <class ExecSpace, class T>
void scan_rows(const ExecSpace& space, const NonFiniteScan& scan, const T* data, std::ptrdiff_t stride, int rows,
               std::size_t length, std::size_t offset = 0) {
  if (rows == 0) return;
  if constexpr (static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible)) {
    constexpr int piece = 1 << 14;
    const std::size_t pieces = (length + piece - 1) / piece;
    Kokkos::parallel_for("camex::scan_rows[non-finite]", Kokkos::RangePolicy<ExecSpace>(space, 0, rows * pieces),
                         [=](std::size_t k) {
                           const std::size_t r = k / pieces, p0 = k % pieces * piece;
                           const int len = length - p0 < piece ? static_cast<int>(length - p0) : piece;
                           scan.check(data + r * stride + p0, len, offset + r * length + p0);
                         });
  } else {
    Kokkos::parallel_for("camex::scan_rows[non-finite]", Kokkos::RangePolicy<ExecSpace>(space, 0, rows * length),
                         KOKKOS_LAMBDA(std::size_t k) {
                           const std::size_t r = k / length, p = k % length;
                           scan.check(data + r * stride + p, 1, offset + k);
                         });
  }
}

/// The position a scan recorded (no_position when every value was finite): the one number read back.
template <class ExecSpace>
std::size_t first_non_finite(const ExecSpace& space, const NonFiniteScan& scan) {
  return read_back(space, scan.first);
}

/// Arms a scan whose cell lives at `cell`: the cell is set to no_position on `space`.
template <class ExecSpace>
NonFiniteScan arm_scan(const ExecSpace& space, std::size_t* cell) {
  Kokkos::parallel_for("camex::arm_scan", Kokkos::RangePolicy<ExecSpace>(space, 0, 1),
                       KOKKOS_LAMBDA(std::size_t) { *cell = no_position; });
  return {cell};
}

/// One value of a device matrix, read back for an error message.
template <class ExecSpace, class View>
auto read_entry(const ExecSpace& space, const View& view, std::size_t row, std::size_t col) {
  return read_back(space, view.data() + row * row_stride(view) + col);
}

}  // namespace camex::detail
