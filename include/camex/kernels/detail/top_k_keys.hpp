#pragma once
// What every top-k launcher (kernels/top_k.hpp, and on Cuda kernels/detail/top_k_cub.hpp) orders entries by and
// describes a row's selection with: magnitudes as unsigned keys, the selection as a threshold and a tie end, and the
// radix digits the threshold is found in.

#include <Kokkos_Core.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "camex/core/error.hpp"

namespace camex::detail {

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

/// A row's selection as two numbers instead of a mask: entry p is among the k largest magnitudes when its key is
/// above `threshold` (the k-th largest key), or equal to it and p < `tie_end` (the lowest-index ties are kept).
/// Keys of either width fit `threshold`.
struct TrimBoundary {
  std::uint64_t threshold;
  std::uint64_t tie_end;

  /// Whether the entry of key `key` at index p is selected.
  template <class Key>
  KOKKOS_INLINE_FUNCTION bool selects(Key key, std::uint64_t p) const {
    return key > threshold || (key == threshold && p < tie_end);
  }
};

/// The digits of a key below its (always clear) sign bit, most significant first: `first` bits, then at most
/// `later` (the last one narrower where the bits run out). The host's: 12 then 11, float 12 + 11 + 8 and double
/// 12 + 11 + 11 + 11 + 11 + 7; CUB's: 8 at a time, float 8 + 8 + 8 + 7 and double 7 x 8 + 7.
template <class T, int first = 12, int later = 11>
struct DigitPlan {
  int count = 0;
  int shift[8] = {};
  int width[8] = {};
  constexpr DigitPlan() {
    for (int top = 8 * static_cast<int>(sizeof(T)) - 1, w = first; top > 0; top -= w, w = later) {
      w = w < top ? w : top;
      shift[count] = top - w;
      width[count] = w;
      ++count;
    }
  }
};

/// Throws argument_error naming the first NaN of the [R, P] `values`, if any. For a selection that met an infinity
/// or a NaN (rare, so copying the values to the host to find out which is affordable).
template <class Values>
void reject_nan_values(const char* fn, const Values& values) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values);
  std::size_t nans = 0, first_r = 0, first_p = 0;
  for (std::size_t r = 0; r < host.extent(0); ++r)
    for (std::size_t p = 0; p < host.extent(1); ++p)
      if (std::isnan(host(r, p)) && nans++ == 0) {
        first_r = r;
        first_p = p;
      }
  if (nans)
    throw argument_error(fn, "values", "no NaN (magnitudes must be ordered)",
                         concat(nans, " NaN values, the first at values(", first_r, ", ", first_p, ')'));
}

}  // namespace camex::detail
