#pragma once
// The one primitive under every merge: out[o, :] = sum_k C[o, k] * rows[k, :], for a handful of input rows
// (experts, or routing groups in a backward) and long rows (parameters). Forward soft merge is C = scores; the
// expert gradient of the backward is C = scores^T, so both run through this file.
//
// Two schedules, because CPUs and GPUs want the loops nested differently:
//  * tiled: a work item is a tile of the parameter axis small enough that the K input tiles stay in L1 while
//    every output row of the tile is written; the innermost loop runs along parameters and is vectorised.
//  * lane_per_parameter: a work item is one parameter index and loops over outputs and inputs; adjacent items
//    touch adjacent addresses, which is what GPU lanes coalesce.
// Both sum over k in the same order, so they agree to the last bit wherever the compiler contracts alike.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>

#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define CAMEX_IVDEP
#elif defined(__clang__)
#define CAMEX_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define CAMEX_IVDEP _Pragma("GCC ivdep")
#else
#define CAMEX_IVDEP
#endif

namespace camex {

/// How a kernel maps work onto the execution space. `automatic` picks `tiled` for spaces that run on the host and
/// `lane_per_parameter` for the others; the explicit choices exist so tests can run both everywhere.
enum class Schedule { automatic, tiled, lane_per_parameter };

namespace detail {

/// A strided view of the small coefficient matrix C: C[o, k] = data[o * out_stride + k * in_stride].
template <class T>
struct Coefficients {
  const T* data;
  std::ptrdiff_t out_stride;
  std::ptrdiff_t in_stride;
  KOKKOS_INLINE_FUNCTION T operator()(std::ptrdiff_t o, std::ptrdiff_t k) const {
    return data[o * out_stride + k * in_stride];
  }
};

/// out[0, len) (+)= sum_{k < K} c(o, k0 + k) * rows[k0 + k][0, len) with K fixed at compile time, so the k loop
/// unrolls into registers and the p loop vectorises.
template <int K, bool Accumulate, class T>
KOKKOS_FORCEINLINE_FUNCTION void combine_block(const T* rows, std::ptrdiff_t row_stride, const Coefficients<T>& c,
                                               std::ptrdiff_t o, int k0, T* out, int len) {
  T coef[K];
  const T* row[K];
  for (int k = 0; k < K; ++k) {
    coef[k] = c(o, k0 + k);
    row[k] = rows + (k0 + k) * row_stride;
  }
  CAMEX_IVDEP
  for (int p = 0; p < len; ++p) {
    T acc = Accumulate ? out[p] : T(0);
    for (int k = 0; k < K; ++k) acc += coef[k] * row[k][p];
    out[p] = acc;
  }
}

template <bool Accumulate, class T>
KOKKOS_INLINE_FUNCTION void combine_remainder(int count, const T* rows, std::ptrdiff_t row_stride,
                                              const Coefficients<T>& c, std::ptrdiff_t o, int k0, T* out,
                                              int len) {
  switch (count) {
    case 1: combine_block<1, Accumulate>(rows, row_stride, c, o, k0, out, len); break;
    case 2: combine_block<2, Accumulate>(rows, row_stride, c, o, k0, out, len); break;
    case 3: combine_block<3, Accumulate>(rows, row_stride, c, o, k0, out, len); break;
    case 4: combine_block<4, Accumulate>(rows, row_stride, c, o, k0, out, len); break;
    case 5: combine_block<5, Accumulate>(rows, row_stride, c, o, k0, out, len); break;
    case 6: combine_block<6, Accumulate>(rows, row_stride, c, o, k0, out, len); break;
    case 7: combine_block<7, Accumulate>(rows, row_stride, c, o, k0, out, len); break;
    default: break;
  }
}

/// One output row over one tile: blocks of 8 inputs, the first block writing and later blocks accumulating.
template <class T>
KOKKOS_INLINE_FUNCTION void combine_rows(int in_rows, const T* rows, std::ptrdiff_t row_stride,
                                         const Coefficients<T>& c, std::ptrdiff_t o, T* out, int len) {
  constexpr int block = 8;
  int k0 = 0;
  for (; k0 + block <= in_rows; k0 += block) {
    if (k0 == 0)
      combine_block<block, false>(rows, row_stride, c, o, k0, out, len);
    else
      combine_block<block, true>(rows, row_stride, c, o, k0, out, len);
  }
  if (k0 == 0)
    combine_remainder<false>(in_rows - k0, rows, row_stride, c, o, k0, out, len);
  else
    combine_remainder<true>(in_rows - k0, rows, row_stride, c, o, k0, out, len);
}

/// Elements of one tile: the K input tiles take about 16 KiB, half of the smallest L1 data cache camex targets,
/// leaving room for the output tile and the hardware prefetcher's lines.
template <class T>
inline int tile_length(int in_rows) {
  const int fit = static_cast<int>(16384 / (sizeof(T) * static_cast<std::size_t>(std::max(in_rows, 1))));
  return std::clamp(fit / 64 * 64, 64, 4096);
}

template <class T>
struct TiledRowCombination {
  Coefficients<T> coef;
  const T* rows;
  std::ptrdiff_t row_stride;
  int in_rows;
  T* out;
  std::ptrdiff_t out_stride;
  int out_rows;
  std::size_t length;
  int tile;

  KOKKOS_INLINE_FUNCTION void operator()(std::size_t t) const {
    const std::size_t p0 = t * static_cast<std::size_t>(tile);
    const int len = static_cast<int>(length - p0 < static_cast<std::size_t>(tile) ? length - p0 : tile);
    for (int o = 0; o < out_rows; ++o) combine_rows(in_rows, rows + p0, row_stride, coef, o, out + o * out_stride + p0, len);
  }
};

template <class T>
struct LaneRowCombination {
  Coefficients<T> coef;
  const T* rows;
  std::ptrdiff_t row_stride;
  int in_rows;
  T* out;
  std::ptrdiff_t out_stride;
  int out_rows;

  KOKKOS_INLINE_FUNCTION void operator()(std::size_t p) const {
    for (int o = 0; o < out_rows; ++o) {
      T acc = 0;
      for (int k = 0; k < in_rows; ++k) acc += coef(o, k) * rows[k * row_stride + p];
      out[o * out_stride + p] = acc;
    }
  }
};

template <class ExecSpace>
constexpr Schedule resolve(Schedule s) {
  if (s != Schedule::automatic) return s;
  return static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible) ? Schedule::tiled
                                                                              : Schedule::lane_per_parameter;
}

/// out[o, :] = sum_k coef(o, k) rows[k, :] over `length` columns, on `space`.
template <class ExecSpace, class T>
void row_combination(const ExecSpace& space, Schedule schedule, Coefficients<T> coef, const T* rows,
                     std::ptrdiff_t row_stride, int in_rows, T* out, std::ptrdiff_t out_stride, int out_rows,
                     std::size_t length) {
  if (resolve<ExecSpace>(schedule) == Schedule::tiled) {
    const int tile = tile_length<T>(in_rows);
    const std::size_t tiles = (length + tile - 1) / tile;
    Kokkos::parallel_for("camex::row_combination[tiled]", Kokkos::RangePolicy<ExecSpace>(space, 0, tiles),
                         TiledRowCombination<T>{coef, rows, row_stride, in_rows, out, out_stride, out_rows, length,
                                                tile});
  } else {
    Kokkos::parallel_for("camex::row_combination[lane]", Kokkos::RangePolicy<ExecSpace>(space, 0, length),
                         LaneRowCombination<T>{coef, rows, row_stride, in_rows, out, out_stride, out_rows});
  }
}

}  // namespace detail
}  // namespace camex
