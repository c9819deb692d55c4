#pragma once
// Per-row sums over a long axis that come out the same for any thread count: the axis is cut into fixed chunks
// (their length depends only on the length), each chunk is summed in double, and the chunk sums are added in order.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>

#include "camex/core/workspace.hpp"
#include "camex/kernels/row_combination.hpp"

namespace camex::detail {

/// Chunks of a row of `length` entries: at most 64, at least 4096 entries each.
struct RowSumChunking {
  std::size_t chunk, chunks;
  explicit RowSumChunking(std::size_t length)
      : chunk(std::max<std::size_t>(4096, (length + 63) / 64)), chunks((length + chunk - 1) / chunk) {}
};

inline std::size_t row_sums_workspace_elements(std::size_t rows, std::size_t length) {
  return rows * RowSumChunking(length).chunks;
}

/// out(i) = sum_{p < length} term(i, p) for i < rows, `partial` holding row_sums_workspace_elements doubles.
template <class ExecSpace, class Term, class Out>
void row_sums(const ExecSpace& space, std::size_t rows, std::size_t length, const Term& term,
              const Kokkos::View<double*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>& partial,
              const Out& out) {
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
