#pragma once
// Exact top-k by magnitude, per row: the "trim" step of TIES (keep the `density` fraction of each task vector's
// entries with the largest |value|). An O(P) radix select on the bits of |x| (for IEEE floats, |x| read as an
// unsigned integer orders like |x|), not a sort: one histogram pass per byte of the key finds the k-th largest
// magnitude, then one pass counts and one pass marks.
//
// Ties: where several entries share the k-th largest magnitude, the ones with the lowest indices are kept, so
// the mask is a function of the values alone (PyTorch's topk and mergekit leave this unspecified).

#include <Kokkos_Core.hpp>

#include <bit>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "camex/core/error.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"

namespace camex {

/// Entries to keep out of `params` at `density`, as mergekit counts them: floor(density * params); a density of
/// 1 or more keeps everything. Throws argument_error when that keeps nothing or density is not a number in (0, inf).
inline std::size_t top_k_count(const char* function, double density, std::size_t params) {
  if (!(density > 0) || !std::isfinite(density))
    throw argument_error(function, "density", "a fraction in (0, 1]", detail::concat(density));
  if (density >= 1) return params;
  const auto k = static_cast<std::size_t>(density * static_cast<double>(params));
  if (k == 0)
    throw argument_error(function, "density", detail::concat("at least 1/", params, " so that one entry of ", params,
                                                             " is kept"),
                         detail::concat(density, ", which keeps none"));
  return k;
}

namespace detail {

template <class T>
using magnitude_key = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

/// |x| as an unsigned integer: for IEEE-754 values, a larger key is a larger magnitude, and NaNs are above +inf.
template <class T>
KOKKOS_INLINE_FUNCTION magnitude_key<T> key_of(T x) {
  using Key = magnitude_key<T>;
  Key bits;
  static_assert(sizeof(bits) == sizeof(x));
  __builtin_memcpy(&bits, &x, sizeof(x));
  return bits & (~Key{0} >> 1);
}

template <class T>
constexpr magnitude_key<T> infinity_key = std::bit_cast<magnitude_key<T>>(std::numeric_limits<T>::infinity());

/// Work decomposition of a row: fixed chunks that depend on P only (so results do not depend on threads).
struct SelectChunking {
  std::size_t chunk, chunks;
  explicit SelectChunking(std::size_t params) {
    const std::size_t wanted = std::min<std::size_t>(64, (params + 4095) / 4096);
    chunk = ((params + wanted - 1) / wanted + 63) / 64 * 64;
    chunks = (params + chunk - 1) / chunk;
  }
};

/// The arrays of one selection, in the order they are carved from the workspace.
template <class ExecSpace, class T>
struct SelectState {
  using Key = magnitude_key<T>;
  typename WorkspaceCarver<ExecSpace>::template Array<std::uint32_t> histogram;  // [rows, chunks, 256]
  typename WorkspaceCarver<ExecSpace>::template Array<Key> prefix;              // per row: threshold bits so far
  typename WorkspaceCarver<ExecSpace>::template Array<std::uint64_t> remaining;  // per row: ranks still to place
  typename WorkspaceCarver<ExecSpace>::template Array<std::uint64_t> equal;      // [rows, chunks]: ties, then offsets
  typename WorkspaceCarver<ExecSpace>::template Array<std::uint64_t> nan_count;  // [1]

  SelectState(WorkspaceCarver<ExecSpace>& carver, std::size_t rows, std::size_t chunks)
      : histogram(carver.template take<std::uint32_t>(rows * chunks * 256)),
        prefix(carver.template take<Key>(rows)),
        remaining(carver.template take<std::uint64_t>(rows)),
        equal(carver.template take<std::uint64_t>(rows * chunks)),
        nan_count(carver.template take<std::uint64_t>(1)) {}
};

}  // namespace detail

/// Bytes of workspace top_k_by_magnitude needs for `rows` rows of `params` entries of type Scalar.
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
std::size_t top_k_workspace_bytes(std::size_t rows, std::size_t params) {
  detail::WorkspaceCarver<ExecSpace> carver;
  detail::SelectState<ExecSpace, Scalar>(carver, rows, detail::SelectChunking(params).chunks);
  return carver.bytes();
}

/// keep(r, p) = 1 for the k entries of row r of `values` with the largest magnitude, 0 for the others; among
/// entries tied at the k-th largest magnitude the lowest indices are kept. 1 <= k <= P. NaN values are rejected
/// (argument_error naming the first one); infinities are ordinary large magnitudes.
template <class ExecSpace, MatrixOn<ExecSpace> Values, MatrixOn<ExecSpace> Keep>
  requires MutableMatrix<Keep> && std::same_as<typename Keep::value_type, std::uint8_t> &&
           std::floating_point<typename Values::non_const_value_type>
void top_k_by_magnitude(const ExecSpace& space, const Values& values, std::size_t k, const Keep& keep,
                        const Workspace<ExecSpace>& workspace) {
  using T = typename Values::non_const_value_type;
  using Key = detail::magnitude_key<T>;
  constexpr const char* fn = "camex::top_k_by_magnitude";
  detail::require_nonempty(fn, "values", values, "[R, P] matrix");
  const std::size_t rows = values.extent(0), params = values.extent(1);
  detail::require_shape(fn, "keep", keep, rows, params, "[R, P], the shape of values");
  if (k < 1 || k > params)
    throw argument_error(fn, "k", detail::concat("a count in [1, ", params, "] (P = values.extent(1))"), detail::concat(k));

  const detail::SelectChunking chunking(params);
  detail::WorkspaceCarver<ExecSpace> carver(fn, workspace);
  const detail::SelectState<ExecSpace, T> state(carver, rows, chunking.chunks);
  const std::size_t chunk = chunking.chunk, chunks = chunking.chunks;
  const auto per_chunk = Kokkos::RangePolicy<ExecSpace>(space, 0, rows * chunks);
  const auto per_row = Kokkos::RangePolicy<ExecSpace>(space, 0, rows);
  const auto hist = state.histogram;
  const auto prefix = state.prefix;
  const auto remaining = state.remaining;
  const auto equal = state.equal;
  const auto nans = state.nan_count;

  Kokkos::deep_copy(space, nans, std::uint64_t{0});
  Kokkos::parallel_for("camex::top_k[init]", per_row, KOKKOS_LAMBDA(std::size_t r) {
    prefix(r) = 0;
    remaining(r) = k;
  });

  // Most significant byte first: count, among the entries whose higher bytes match the prefix found so far, how
  // many have each value of this byte; the k-th largest lies in the highest bin where the running count reaches
  // the ranks still to place.
  for (int shift = 8 * static_cast<int>(sizeof(Key)) - 8; shift >= 0; shift -= 8) {
    const Key high_mask = shift + 8 >= 8 * static_cast<int>(sizeof(Key)) ? Key{0} : ~Key{0} << (shift + 8);
    const bool first = shift + 8 == 8 * static_cast<int>(sizeof(Key));
    Kokkos::parallel_for("camex::top_k[histogram]", per_chunk, KOKKOS_LAMBDA(std::size_t i) {
      const std::size_t r = i / chunks, c = i % chunks;
      std::uint32_t local[256] = {};
      std::uint64_t local_nans = 0;
      const Key want = prefix(r);
      const std::size_t end = (c + 1) * chunk < params ? (c + 1) * chunk : params;
      // Branch-free: after the first byte about half the entries match the prefix, in no predictable order.
      for (std::size_t p = c * chunk; p < end; ++p) {
        const Key key = detail::key_of(values(r, p));
        if (first) local_nans += key > detail::infinity_key<T>;
        local[(key >> shift) & 0xff] += (key & high_mask) == want;
      }
      for (int d = 0; d < 256; ++d) hist(i * 256 + d) = local[d];
      if (local_nans) Kokkos::atomic_add(&nans(0), local_nans);
    });
    if (first) {
      std::uint64_t found = 0;
      space.fence();
      Kokkos::deep_copy(found, Kokkos::subview(nans, 0));
      if (found) {
        auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values);
        for (std::size_t r = 0; r < rows; ++r)
          for (std::size_t p = 0; p < params; ++p)
            if (std::isnan(host(r, p)))
              throw argument_error(fn, "values", "no NaN (magnitudes must be ordered)",
                                   detail::concat(found, " NaN values, the first at values(", r, ", ", p, ')'));
      }
    }
    Kokkos::parallel_for("camex::top_k[pick digit]", per_row, KOKKOS_LAMBDA(std::size_t r) {
      std::uint64_t left = remaining(r);
      for (int d = 255; d >= 0; --d) {
        std::uint64_t count = 0;
        for (std::size_t c = 0; c < chunks; ++c) count += hist((r * chunks + c) * 256 + d);
        if (count >= left) {  // always met by d = 0: every entry matching the prefix is counted
          prefix(r) |= static_cast<Key>(d) << shift;
          break;
        }
        left -= count;
      }
      remaining(r) = left;
    });
  }

  // prefix(r) is now the k-th largest key and remaining(r) how many entries equal to it are kept: the first ones
  // in index order. Count them per chunk, turn the counts into offsets, then mark.
  Kokkos::parallel_for("camex::top_k[count ties]", per_chunk, KOKKOS_LAMBDA(std::size_t i) {
    const std::size_t r = i / chunks, c = i % chunks;
    const std::size_t end = (c + 1) * chunk < params ? (c + 1) * chunk : params;
    std::uint64_t ties = 0;
    for (std::size_t p = c * chunk; p < end; ++p) ties += detail::key_of(values(r, p)) == prefix(r);
    equal(i) = ties;
  });
  Kokkos::parallel_for("camex::top_k[tie offsets]", per_row, KOKKOS_LAMBDA(std::size_t r) {
    std::uint64_t offset = 0;
    for (std::size_t c = 0; c < chunks; ++c) {
      const std::uint64_t ties = equal(r * chunks + c);
      equal(r * chunks + c) = offset;
      offset += ties;
    }
  });
  Kokkos::parallel_for("camex::top_k[mark]", per_chunk, KOKKOS_LAMBDA(std::size_t i) {
    const std::size_t r = i / chunks, c = i % chunks;
    const std::size_t end = (c + 1) * chunk < params ? (c + 1) * chunk : params;
    const Key threshold = prefix(r);
    const std::uint64_t take = remaining(r);
    std::uint64_t rank = equal(i);
    for (std::size_t p = c * chunk; p < end; ++p) {
      const Key key = detail::key_of(values(r, p));
      keep(r, p) = key > threshold || (key == threshold && rank++ < take);
    }
  });
}

}  // namespace camex
