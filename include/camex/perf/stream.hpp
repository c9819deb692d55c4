#pragma once
// The memory-bandwidth ceiling of an execution space, measured the way STREAM does (McCalpin): copy a[i] = b[i]
// and triad a[i] = b[i] + s*c[i] over arrays far larger than any cache, best of several runs, bytes counted as the
// arrays named in the kernel (no write-allocate traffic). Kernels report their GB/s as a fraction of these.
//
// A third figure, write, is the rate at which memory takes a stream of stores the way camex writes outputs larger
// than the caches: on host spaces finished in L1 and sent with non-temporal stores (no read-for-ownership), on
// device spaces plain coalesced stores. A merge into many routing groups writes far more than it reads, so this,
// not triad, is the bound it approaches. A fourth, read, is a pure read stream: each work item folds a run of values
// into one word (a loop the compiler vectorises), best over runs of 4096 entries (a merge tile's), 16384 (a piece of
// the non-finite scan's) and 65536. With write it makes the roofline a kernel that reads R bytes and writes W bytes
// is judged against, R / read + W / write seconds.
//
// A fifth, device_copy, is Kokkos::deep_copy between two of the arrays: on a GPU the driver's device-to-device copy
// (cudaMemcpyAsync), the rate the vendor's own copy engine path reaches and the one STREAM copy is held to. On a
// device space each lane of copy and triad moves four entries a quarter of the array apart (four loads in flight,
// each coalesced), the arrays default to 2^28 entries (1 GiB each: a launch's fixed cost is then under 1 % of a pass
// at 3 TB/s), and read is a coalesced OR-reduction.

#include <Kokkos_Core.hpp>

#include "camex/platform/streaming_store.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

namespace camex::perf {

struct StreamBandwidth {
  double copy_GBps = 0;
  double triad_GBps = 0;
  double write_GBps = 0;
  double read_GBps = 0;
  double device_copy_GBps = 0;
};

/// Entries per STREAM array: 2^25 (128 MiB, four times the largest L3 camex has met) on host spaces, 2^28 on
/// device spaces.
template <class ExecSpace>
constexpr std::size_t default_stream_elements() {
  return static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible) ? std::size_t{1} << 25
                                                                                                : std::size_t{1} << 28;
}

/// Seconds of the fastest of `repeats` runs of `run()`, each fenced on `space`.
template <class ExecSpace, class Run>
double best_seconds(const ExecSpace& space, int repeats, Run&& run) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < repeats; ++r) {
    space.fence();
    Kokkos::Timer timer;
    run();
    space.fence();
    best = std::min(best, timer.seconds());
  }
  return best;
}

/// STREAM copy and triad, the write and read rates and the device copy, on `space` with three float arrays of
/// `elements` each.
template <class ExecSpace = Kokkos::DefaultExecutionSpace>
StreamBandwidth measure_stream(const ExecSpace& space = ExecSpace{},
                               std::size_t elements = default_stream_elements<ExecSpace>(), int repeats = 10) {
  constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);
  using Array = Kokkos::View<float*, typename ExecSpace::memory_space>;
  Array a(Kokkos::view_alloc(Kokkos::WithoutInitializing, "stream::a"), elements);
  Array b(Kokkos::view_alloc(Kokkos::WithoutInitializing, "stream::b"), elements);
  Array c(Kokkos::view_alloc(Kokkos::WithoutInitializing, "stream::c"), elements);
  const auto range = Kokkos::RangePolicy<ExecSpace>(space, 0, elements);
  // First touch by the same threads and schedule as the timed loops, so pages sit where they are used.
  Kokkos::parallel_for("camex::stream::init", range, KOKKOS_LAMBDA(std::size_t i) {
    a(i) = 1.0f;
    b(i) = 2.0f;
    c(i) = 0.5f;
  });
  // Host: one entry a work item (the range is cut into contiguous chunks per thread). Device: `per_lane` entries a
  // lane, `lanes` apart; the last elements % per_lane entries go to lanes of their own.
  constexpr std::size_t per_lane = on_host ? 1 : 4;
  const std::size_t lanes = elements / per_lane, rest = elements - lanes * per_lane;
  const auto lane_range = Kokkos::RangePolicy<ExecSpace>(space, 0, lanes + rest);
  const double copy_s = best_seconds(space, repeats, [&] {
    Kokkos::parallel_for("camex::stream::copy", lane_range, KOKKOS_LAMBDA(std::size_t w) {
      if (w >= lanes) {
        a(w - lanes + lanes * per_lane) = b(w - lanes + lanes * per_lane);
        return;
      }
      for (std::size_t j = 0; j < per_lane; ++j) a(w + j * lanes) = b(w + j * lanes);
    });
  });
  const float scalar = 3.0f;
  const double triad_s = best_seconds(space, repeats, [&] {
    Kokkos::parallel_for("camex::stream::triad", lane_range, KOKKOS_LAMBDA(std::size_t w) {
      if (w >= lanes) {
        const std::size_t i = w - lanes + lanes * per_lane;
        a(i) = b(i) + scalar * c(i);
        return;
      }
      for (std::size_t j = 0; j < per_lane; ++j) a(w + j * lanes) = b(w + j * lanes) + scalar * c(w + j * lanes);
    });
  });
  const double device_copy_s = best_seconds(space, repeats, [&] { Kokkos::deep_copy(space, a, b); });
  double write_s = 0;
  if constexpr (on_host) {
    // Work items as long as a merge's tiles, each written in L1-sized pieces and fenced once, as the merge does.
    constexpr std::size_t piece = 256, tile = 4096;
    write_s = best_seconds(space, repeats, [&] {
      Kokkos::parallel_for("camex::stream::write", Kokkos::RangePolicy<ExecSpace>(space, 0, (elements + tile - 1) / tile),
                           [=](std::size_t t) {
                             alignas(64) float staged[piece];
                             for (float& v : staged) v = scalar;
                             for (std::size_t p0 = t * tile; p0 < std::min((t + 1) * tile, elements); p0 += piece)
                               detail::copy_streaming(a.data() + p0, staged, static_cast<int>(std::min(piece, elements - p0)));
                             detail::streaming_fence();
                           });
    });
  } else {
    write_s = best_seconds(space, repeats, [&] {
      Kokkos::parallel_for("camex::stream::write", range, KOKKOS_LAMBDA(std::size_t i) { a(i) = scalar; });
    });
  }
  double read_s = std::numeric_limits<double>::infinity();
  if constexpr (on_host) {
    for (const std::size_t run : {std::size_t{1} << 12, std::size_t{1} << 14, std::size_t{1} << 16}) {
      const std::size_t runs = (elements + run - 1) / run;
      Kokkos::View<std::uint32_t*, typename ExecSpace::memory_space> folded("camex::stream::folded", runs);
      read_s = std::min(read_s, best_seconds(space, repeats, [&] {
        Kokkos::parallel_for("camex::stream::read", Kokkos::RangePolicy<ExecSpace>(space, 0, runs), KOKKOS_LAMBDA(std::size_t r) {
          const float* values = b.data() + r * run;
          const std::size_t length = r + 1 < runs ? run : elements - r * run;
          std::uint32_t fold = 0;  // an OR of integers: the compiler vectorises the reduction without a hint
          for (std::size_t i = 0; i < length; ++i) {
            std::uint32_t bits;
            std::memcpy(&bits, values + i, sizeof bits);
            fold |= bits;
          }
          folded(r) = fold;
        });
      }));
    }
  } else {
    read_s = best_seconds(space, repeats, [&] {
      std::uint32_t fold = 0;
      Kokkos::parallel_reduce("camex::stream::read", range, KOKKOS_LAMBDA(std::size_t i, std::uint32_t& acc) {
        std::uint32_t bits;
        std::memcpy(&bits, &b(i), sizeof bits);
        acc |= bits;
      }, Kokkos::BOr<std::uint32_t>(fold));
    });
  }
  const double bytes = static_cast<double>(elements) * sizeof(float);
  return {2 * bytes / copy_s * 1e-9, 3 * bytes / triad_s * 1e-9, bytes / write_s * 1e-9, bytes / read_s * 1e-9,
          2 * bytes / device_copy_s * 1e-9};
}

}  // namespace camex::perf
