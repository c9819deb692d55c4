#pragma once
// Per-row sums over a long axis that come out the same for any thread count: the axis is cut into fixed chunks
// (their length depends only on the length), each chunk is summed in double, and the chunk sums are added in order.
// On Kokkos' Cuda space a row is a segment of cub::DeviceSegmentedReduce::Sum instead (a block per row, every lane
// busy, the same tree every run): the same sums to roundoff, run-to-run identical, not the host's bits.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cub/device/device_segmented_reduce.cuh>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/transform_iterator.h>

#include <stdexcept>
#include <string>
#endif

#include "camex/core/workspace.hpp"
#include "camex/kernels/row_combination.hpp"

namespace camex::detail {

/// Chunks of a row of `length` entries: at most 64, at least 4096 entries each.
struct RowSumChunking {
  std::size_t chunk, chunks;
  explicit RowSumChunking(std::size_t length)
      : chunk(std::max<std::size_t>(4096, (length + 63) / 64)), chunks((length + chunk - 1) / chunk) {}
};

#if defined(KOKKOS_ENABLE_CUDA)
/// term(i, p) of entry j = i length + p of the flattened rows.
template <class Term>
struct FlatRowTerm {
  Term term;
  std::int64_t length;
  KOKKOS_INLINE_FUNCTION double operator()(std::int64_t j) const {
    return term(static_cast<std::size_t>(j / length), static_cast<std::size_t>(j % length));
  }
};

struct RowStart {
  std::int64_t length;
  KOKKOS_INLINE_FUNCTION std::int64_t operator()(std::int64_t i) const { return i * length; }
};

/// The sums go to the first `rows` doubles of the workspace, CUB's storage after them at a 256-byte boundary.
inline constexpr std::size_t cub_row_sums_alignment = 256;

template <class Term>
std::size_t cub_row_sums_temp_bytes(std::size_t rows, std::size_t length, Term term) {
  const auto starts = thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0),
                                                      RowStart{static_cast<std::int64_t>(length)});
  std::size_t bytes = 0;
  const cudaError_t status = cub::DeviceSegmentedReduce::Sum(
      nullptr, bytes,
      thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0),
                                      FlatRowTerm<Term>{term, static_cast<std::int64_t>(length)}),
      static_cast<double*>(nullptr), static_cast<std::int64_t>(rows), starts, starts + 1);
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("camex row sums: cub::DeviceSegmentedReduce::Sum (size query) failed: ") +
                             cudaGetErrorString(status));
  return bytes;
}

struct ZeroTerm {
  KOKKOS_INLINE_FUNCTION double operator()(std::size_t, std::size_t) const { return 0; }
};
#endif

/// Doubles of workspace row_sums needs on `ExecSpace`.
template <class ExecSpace>
std::size_t row_sums_workspace_elements(std::size_t rows, std::size_t length) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>)
    return rows + (cub_row_sums_temp_bytes(rows, length, ZeroTerm{}) + 2 * cub_row_sums_alignment) / sizeof(double);
#endif
  return rows * RowSumChunking(length).chunks;
}

/// out(i) = sum_{p < length} term(i, p) for i < rows, `partial` holding row_sums_workspace_elements doubles.
template <class ExecSpace, class Term, class Out>
void row_sums(const ExecSpace& space, std::size_t rows, std::size_t length, const Term& term,
              const Kokkos::View<double*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>& partial,
              const Out& out) {
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    // CUB's storage needs no more for one term than for another; asked again with this one, it must fit.
    std::size_t bytes = cub_row_sums_temp_bytes(rows, length, term);
    const auto base = reinterpret_cast<std::uintptr_t>(partial.data() + rows);
    void* storage = reinterpret_cast<void*>((base + cub_row_sums_alignment - 1) / cub_row_sums_alignment * cub_row_sums_alignment);
    const auto available = partial.extent(0) * sizeof(double) -
                           (reinterpret_cast<std::uintptr_t>(storage) - reinterpret_cast<std::uintptr_t>(partial.data()));
    if (partial.extent(0) < rows || bytes > available)
      throw std::runtime_error("camex row sums: the workspace holds " + std::to_string(partial.extent(0)) +
                               " doubles, fewer than row_sums_workspace_elements asks for this term");
    const auto starts = thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0),
                                                        RowStart{static_cast<std::int64_t>(length)});
    const cudaError_t status = cub::DeviceSegmentedReduce::Sum(
        storage, bytes,
        thrust::make_transform_iterator(thrust::make_counting_iterator<std::int64_t>(0),
                                        FlatRowTerm<Term>{term, static_cast<std::int64_t>(length)}),
        partial.data(), static_cast<std::int64_t>(rows), starts, starts + 1, space.cuda_stream());
    if (status != cudaSuccess)
      throw std::runtime_error(std::string("camex row sums: cub::DeviceSegmentedReduce::Sum failed: ") +
                               cudaGetErrorString(status));
    Kokkos::parallel_for("camex::row_sums[out]", Kokkos::RangePolicy<ExecSpace>(space, 0, rows),
                         KOKKOS_LAMBDA(std::size_t i) { out(i) = partial(i); });
    return;
  }
#endif
  const RowSumChunking c(length);
  const std::size_t chunk = c.chunk, chunks = c.chunks;
  Kokkos::parallel_for("camex::row_sums[chunks]", Kokkos::RangePolicy<ExecSpace>(space, 0, rows * chunks),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t i = w / chunks, k = w % chunks;
                         double acc = 0;
                         for (std::size_t p = k * chunk, end = chunk_end(k, chunk, length); p < end; ++p) acc += term(i, p);
                         partial(w) = acc;
                       });
  Kokkos::parallel_for("camex::row_sums", Kokkos::RangePolicy<ExecSpace>(space, 0, rows), KOKKOS_LAMBDA(std::size_t i) {
    double acc = 0;
    for (std::size_t k = 0; k < chunks; ++k) acc += partial(i * chunks + k);
    out(i) = acc;
  });
}

}  // namespace camex::detail
