#pragma once
// The few values a step exchanges between the host and the execution space's memory, and how. A step of a
// policy, router or layer allocates nothing and makes no copy between memory spaces but these (docs/layers.md,
// "What a step moves"):
//  * read_back: one value of device memory read by the host (a status cell, a loss). Where the host can read
//    the memory it reads the value in place; elsewhere it is one deep copy of sizeof(T) bytes.
//  * write_by_argument: a few host values (per-expert constants) written into device memory as arguments of
//    kernels on the space, so the write is ordered with the space's other work and needs no staging buffer.
//  * copy_matrix: a copy inside the space's memory, as a kernel on the space. Apart from fills with one value,
//    camex calls Kokkos::deep_copy in a step only in read_back, so every copy a Kokkos Tools callback sees there
//    is a read-back (tests/nn/device_resident.cpp counts them).

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>
#include <span>

namespace camex {

/// *value, once every kernel queued on `space` has finished.
template <class T, class ExecSpace>
T read_back(const ExecSpace& space, const T* value) {
  space.fence();
  if constexpr (static_cast<bool>(Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename ExecSpace::memory_space>::accessible)) {
    return *value;
  } else {
    T out{};
    Kokkos::deep_copy(space, Kokkos::View<T, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(&out),
                      Kokkos::View<const T, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(value));
    space.fence();
    return out;
  }
}

namespace detail {

inline constexpr std::size_t argument_batch = 32;

/// destination[i] = piece[i] for i < count, one kernel; the values travel in its arguments.
template <class T, class ExecSpace>
void write_batch(const ExecSpace& space, const Kokkos::Array<T, argument_batch>& piece, std::size_t count, T* destination) {
  Kokkos::parallel_for("camex::write_by_argument", Kokkos::RangePolicy<ExecSpace>(space, 0, count),
                       KOKKOS_LAMBDA(std::size_t i) { destination[i] = piece[i]; });
}

}  // namespace detail

/// destination[i] = T(map(values[i])) on `space`, `map` applied on the host, the results passed 32 per kernel as
/// its arguments.
template <class T, class U, class ExecSpace, class Map>
void write_by_argument(const ExecSpace& space, std::span<const U> values, T* destination, const Map& map) {
  constexpr std::size_t batch = detail::argument_batch;
  for (std::size_t first = 0; first < values.size(); first += batch) {
    const std::size_t count = std::min(batch, values.size() - first);
    Kokkos::Array<T, batch> piece{};
    for (std::size_t i = 0; i < count; ++i) piece[i] = static_cast<T>(map(values[first + i]));
    detail::write_batch(space, piece, count, destination + first);
  }
}

/// destination[i] = T(values[i]) on `space`.
template <class T, class U, class ExecSpace>
void write_by_argument(const ExecSpace& space, std::span<const U> values, T* destination) {
  write_by_argument(space, values, destination, [](const U& v) { return v; });
}

/// destination = source, two matrices of one shape (any strides) in the space's memory.
template <class ExecSpace, class Destination, class Source>
void copy_matrix(const ExecSpace& space, const Destination& destination, const Source& source) {
  const std::size_t cols = source.extent(1);
  Kokkos::parallel_for("camex::copy_matrix", Kokkos::RangePolicy<ExecSpace>(space, 0, source.extent(0) * cols),
                       KOKKOS_LAMBDA(std::size_t k) { destination(k / cols, k % cols) = source(k / cols, k % cols); });
}

}  // namespace camex
