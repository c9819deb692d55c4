#pragma once
// The one primitive under every merge: out[o, :] = sum_k C[o, k] * rows[k, :], for a handful of input rows
// (experts, or routing groups in a backward) and long rows (parameters). Forward soft merge is C = scores; the
// expert gradient of the backward is C = scores^T, so both run through this file.
//
// Two schedules, because CPUs and GPUs want the loops nested differently:
//  * tiled: a work item is a tile of the parameter axis small enough that the K input tiles stay in L1 while
//    every output row of the tile is written; the innermost loop runs along parameters and is vectorised. On host
//    spaces the outputs are written in register blocks (several output rows by up to 64 columns), each input
//    vector loaded once per block, and outputs past the caches leave the registers in non-temporal stores.
//  * lane_per_parameter: a work item is one parameter index and loops over outputs and inputs; adjacent items
//    touch adjacent addresses, which is what GPU lanes coalesce.
// Both sum over k in the same order with fused multiply-adds written out (multiply_add), so they agree to the
// last bit on one space, and across spaces wherever both compile their multiply-adds as fused ones.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "camex/core/schedule.hpp"
#include "camex/kernels/non_finite.hpp"
#include "camex/platform/simd_register.hpp"
#include "camex/platform/streaming_store.hpp"
#include "camex/platform/vectorize.hpp"

namespace camex::detail {

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

/// out[0, len) (+)= sum_{k < K} c(o, k0 + k) * (rows[k0 + k] - centre)[0, len) with K fixed at compile time, so
/// the k loop unrolls into registers and the p loop vectorises. `centre` is null (nothing subtracted) or one row
/// taken from every input row.
template <int K, bool Accumulate, class T>
KOKKOS_FORCEINLINE_FUNCTION void combine_block(const T* rows, std::ptrdiff_t row_stride, const Coefficients<T>& c,
                                               std::ptrdiff_t o, int k0, T* out, int len, const T* centre) {
  T coef[K];
  const T* row[K];
  for (int k = 0; k < K; ++k) {
    coef[k] = c(o, k0 + k);
    row[k] = rows + (k0 + k) * row_stride;
  }
  // One loop, compiled once with and once without the subtraction, so neither pays a test per entry.
  const auto combine = [&](auto centred) {
    CAMEX_IVDEP
    for (int p = 0; p < len; ++p) {
      T acc = Accumulate ? out[p] : T(0);
      for (int k = 0; k < K; ++k) acc = multiply_add(coef[k], decltype(centred)::value ? row[k][p] - centre[p] : row[k][p], acc);
      out[p] = acc;
    }
  };
  if (centre)
    combine(std::true_type{});
  else
    combine(std::false_type{});
}

/// Calls Op<K>::run(k0, args...) on consecutive blocks [k0, k0 + K) that cover [0, count): K = 8 while eight
/// remain, then one block of the remainder. Kernels get a compile-time row count to unroll over.
template <template <int> class Op, class... Args>
KOKKOS_FORCEINLINE_FUNCTION void for_each_block_of_8(int count, const Args&... args) {
  int k0 = 0;
  for (; k0 + 8 <= count; k0 += 8) Op<8>::run(k0, args...);
  switch (count - k0) {
    case 1: Op<1>::run(k0, args...); break;
    case 2: Op<2>::run(k0, args...); break;
    case 3: Op<3>::run(k0, args...); break;
    case 4: Op<4>::run(k0, args...); break;
    case 5: Op<5>::run(k0, args...); break;
    case 6: Op<6>::run(k0, args...); break;
    case 7: Op<7>::run(k0, args...); break;
    default: break;
  }
}

template <int K>
struct CombineBlock {
  template <class T>
  KOKKOS_FORCEINLINE_FUNCTION static void run(int k0, const T* const& rows, const std::ptrdiff_t& row_stride,
                                              const Coefficients<T>& c, const std::ptrdiff_t& o, T* const& out,
                                              const int& len, const T* const& centre) {
    if (k0 == 0)
      combine_block<K, false>(rows, row_stride, c, o, k0, out, len, centre);
    else
      combine_block<K, true>(rows, row_stride, c, o, k0, out, len, centre);
  }
};

/// The cache lines of one tile of up to two sets of rows, prefetched into L2 a few at a time. A kernel that
/// computes on one tile while asking for the lines of its next one keeps the memory busy through its arithmetic;
/// left to the hardware prefetcher, which restarts on every row's short run, the reads of a tile wait for the
/// arithmetic of the one before (docs/performance.md, "Reading the next tile during the arithmetic").
template <class T>
class TilePrefetch {
 public:
  struct Rows {
    const T* first = nullptr;
    std::ptrdiff_t stride = 0;
    int count = 0;
  };

  TilePrefetch() = default;
  KOKKOS_INLINE_FUNCTION TilePrefetch(Rows a, Rows b, int len)
      : row_(reinterpret_cast<const char*>(a.first)),
        stride_(a.stride * static_cast<std::ptrdiff_t>(sizeof(T))),
        rows_(a.count),
        lines_((len * static_cast<int>(sizeof(T)) + 63) / 64),
        next_first_(reinterpret_cast<const char*>(b.first)),
        next_stride_(b.stride * static_cast<std::ptrdiff_t>(sizeof(T))),
        next_rows_(b.count) {
    if (rows_ == 0) next_set();
  }

  /// Lines not asked for yet.
  KOKKOS_INLINE_FUNCTION int remaining() const { return (rows_ + next_rows_) * lines_ - line_; }

  /// Asks for the next `n` lines of the tile (fewer where the tile ends).
  KOKKOS_INLINE_FUNCTION void issue(int n) {
    for (; n > 0 && rows_ > 0; --n) {
      prefetch_into_l2(row_ + 64 * line_);
      if (++line_ == lines_) {
        line_ = 0;
        row_ += stride_;
        if (--rows_ == 0) next_set();
      }
    }
  }

 private:
  KOKKOS_INLINE_FUNCTION void next_set() {
    row_ = next_first_;
    stride_ = next_stride_;
    rows_ = next_rows_;
    next_rows_ = 0;
  }

  // The row being asked for, the bytes to the next row of its set, and the rows of that set left (this one
  // included); then the set after it.
  const char* row_ = nullptr;
  std::ptrdiff_t stride_ = 0;
  int rows_ = 0, line_ = 0, lines_ = 0;
  const char* next_first_ = nullptr;
  std::ptrdiff_t next_stride_ = 0;
  int next_rows_ = 0;
};

/// Lanes of the interleaved partial sums of a dot product over a tile: one 64-byte vector of T.
template <class T>
inline constexpr int dot_lanes = static_cast<int>(64 / sizeof(T));

/// out[m * out_stride + k] += sum_p a[m * a_stride + p] * rows[k * row_stride + p] over one tile of `len` entries,
/// for MA rows of `a` against K rows at once: MA * K vector accumulators, so each loaded vector feeds MA or K fused
/// multiply-adds. Every dot product is summed in one order whatever the blocking: dot_lanes<T> interleaved partial
/// sums along p, a fixed tree, then the tail in p order; so the result depends neither on the blocks nor on where
/// the tile came from. With `ahead`, each step (one vector of every row) also asks for two lines of the next tile:
/// the dot products read little per multiply-add, so they have room to keep the memory busy.
template <int MA, int K, class T>
KOKKOS_FORCEINLINE_FUNCTION void dot_block(const T* a, std::ptrdiff_t a_stride, const T* rows, std::ptrdiff_t row_stride,
                                           int len, double* out, std::ptrdiff_t out_stride,
                                           TilePrefetch<T>* ahead = nullptr) {
  constexpr int lanes = dot_lanes<T>;
  T part[MA][K][lanes] = {};
  int p = 0;
  if constexpr (simd_lanes<T> == lanes) {
    // The partial sums as register values (SimdRegister), each loaded vector held in a register to feed K or MA
    // of them.
    using Simd = SimdRegister<T>;
    typename Simd::type sum[MA][K];
    CAMEX_UNROLL_REGISTERS
    for (int m = 0; m < MA; ++m)
      CAMEX_UNROLL_REGISTERS
      for (int k = 0; k < K; ++k) sum[m][k] = Simd::zero();
    for (; p + lanes <= len; p += lanes) {
      typename Simd::type x[K];
      CAMEX_UNROLL_REGISTERS
      for (int k = 0; k < K; ++k) {
        x[k] = Simd::load(rows + k * row_stride + p);
        Simd::keep_in_register(x[k]);
      }
      CAMEX_UNROLL_REGISTERS
      for (int m = 0; m < MA; ++m) {
        auto y = Simd::load(a + m * a_stride + p);
        Simd::keep_in_register(y);
        CAMEX_UNROLL_REGISTERS
        for (int k = 0; k < K; ++k) sum[m][k] = Simd::multiply_add(y, x[k], sum[m][k]);
      }
      if (ahead) ahead->issue(2);
    }
    for (int m = 0; m < MA; ++m)
      for (int k = 0; k < K; ++k) Simd::store(part[m][k], sum[m][k]);
  } else {
    for (; p + lanes <= len; p += lanes)
      for (int m = 0; m < MA; ++m)
        for (int k = 0; k < K; ++k) {
          CAMEX_VECTOR_LANES
          for (int j = 0; j < lanes; ++j) part[m][k][j] = multiply_add(a[m * a_stride + p + j], rows[k * row_stride + p + j], part[m][k][j]);
        }
  }
  for (int m = 0; m < MA; ++m)
    for (int k = 0; k < K; ++k) {
      T tail = 0;
      for (int q = p; q < len; ++q) tail = multiply_add(a[m * a_stride + q], rows[k * row_stride + q], tail);
      for (int width = lanes / 2; width > 0; width /= 2)
        for (int j = 0; j < width; ++j) part[m][k][j] += part[m][k][j + width];
      out[m * out_stride + k] += static_cast<double>(part[m][k][0] + tail);
    }
}

template <int MA, class T>
KOKKOS_FORCEINLINE_FUNCTION void dots_against_rows(const T* a, std::ptrdiff_t a_stride, int k_count, const T* rows,
                                                   std::ptrdiff_t row_stride, int len, double* out,
                                                   std::ptrdiff_t out_stride, TilePrefetch<T>* ahead) {
  int k0 = 0;
  for (; k0 + 4 <= k_count; k0 += 4)
    dot_block<MA, 4>(a, a_stride, rows + k0 * row_stride, row_stride, len, out + k0, out_stride, ahead);
  if (k0 + 2 <= k_count) {
    dot_block<MA, 2>(a, a_stride, rows + k0 * row_stride, row_stride, len, out + k0, out_stride, ahead);
    k0 += 2;
  }
  if (k0 < k_count) dot_block<MA, 1>(a, a_stride, rows + k0 * row_stride, row_stride, len, out + k0, out_stride, ahead);
}

/// out[m * k_count + k] += sum_p a[m][p] * rows[k][p] over one tile for every m < a_count and k < k_count, in
/// register blocks of up to 4 x 4 dot products (dot_block: the same bits as one product at a time).
template <class T>
KOKKOS_INLINE_FUNCTION void tile_dots(int a_count, const T* a, std::ptrdiff_t a_stride, int k_count, const T* rows,
                                      std::ptrdiff_t row_stride, int len, double* out, TilePrefetch<T>* ahead = nullptr) {
  int m0 = 0;
  for (; m0 + 4 <= a_count; m0 += 4)
    dots_against_rows<4>(a + m0 * a_stride, a_stride, k_count, rows, row_stride, len, out + m0 * k_count, k_count, ahead);
  if (m0 + 2 <= a_count) {
    dots_against_rows<2>(a + m0 * a_stride, a_stride, k_count, rows, row_stride, len, out + m0 * k_count, k_count, ahead);
    m0 += 2;
  }
  if (m0 < a_count)
    dots_against_rows<1>(a + m0 * a_stride, a_stride, k_count, rows, row_stride, len, out + m0 * k_count, k_count, ahead);
}

/// One output row over one tile: blocks of 8 inputs, the first block writing and later blocks accumulating. With
/// a centre the output is centre + sum_k c(o, k) (rows[k] - centre): the centre is added last, as a final input
/// row of coefficient 1 would be, so a centred combination rounds like the one over materialised differences.
template <class T>
KOKKOS_INLINE_FUNCTION void combine_rows(int in_rows, const T* rows, std::ptrdiff_t row_stride,
                                         const Coefficients<T>& c, std::ptrdiff_t o, T* out, int len,
                                         const T* centre = nullptr) {
  for_each_block_of_8<CombineBlock>(in_rows, rows, row_stride, c, o, out, len, centre);
  if (centre) {
    CAMEX_IVDEP
    for (int p = 0; p < len; ++p) out[p] += centre[p];
  }
}

/// Where a register block's finished rows go: plain stores, or non-temporal stores straight from the registers
/// (the caller has checked whole_streaming_stores for every output row it streams).
enum class BlockStores { cached, streaming };

/// out[m * out_stride + j] (+)= sum_{k < K} c(o0 + m, k) * rows[k * row_stride + j] for m < MR, j < W: a register
/// block of MR output rows by W columns, so each loaded input vector feeds MR fused multiply-adds instead of one.
/// k runs in order, as in combine_rows, so both give the same bits; Centred takes centre[j] from every input and
/// adds it back last, as combine_rows does. Where W is a whole number of SIMD registers the accumulators are
/// register values (SimdRegister) that leave only in their final stores, non-temporal ones for a streamed block
/// (the caller has checked whole_streaming_stores); otherwise, at the narrow widths of a row's end and on targets
/// without those registers, they are an array the compiler vectorises.
template <int MR, int W, bool Centred, bool Accumulate, BlockStores Stores, class T>
inline void combine_row_block(int K, const T* rows, std::ptrdiff_t row_stride, const Coefficients<T>& c, std::ptrdiff_t o0,
                              T* out, std::ptrdiff_t out_stride, const T* centre) {
  if constexpr (whole_simd_registers<T>(W)) {
    using Simd = SimdRegister<T>;
    constexpr int L = simd_lanes<T>, V = W / L;
    // The centre stays in registers where the accumulators leave room (small blocks, whose inputs are few per
    // multiply-add), and is reloaded from L1 with each input row otherwise.
    constexpr bool hold_centre = Centred && MR * V + 2 * V + 1 <= simd_register_count;
    typename Simd::type acc[MR][V], held_centre[hold_centre ? V : 1];
    const auto centre_vector = [&](int v) { return hold_centre ? held_centre[v] : Simd::load(centre + v * L); };
    if constexpr (hold_centre) {
      CAMEX_UNROLL_REGISTERS
      for (int v = 0; v < V; ++v) held_centre[v] = Simd::load(centre + v * L);
    }
    CAMEX_UNROLL_REGISTERS
    for (int m = 0; m < MR; ++m)
      CAMEX_UNROLL_REGISTERS
      for (int v = 0; v < V; ++v) acc[m][v] = Accumulate ? Simd::load(out + m * out_stride + v * L) : Simd::zero();
    for (int k = 0; k < K; ++k) {
      const T* row = rows + k * row_stride;
      typename Simd::type x[V];
      CAMEX_UNROLL_REGISTERS
      for (int v = 0; v < V; ++v) {
        x[v] = Centred ? Simd::subtract(Simd::load(row + v * L), centre_vector(v)) : Simd::load(row + v * L);
        // Held where it feeds several rows; a single row's multiply-add takes it best as its memory operand.
        if constexpr (MR > 1) Simd::keep_in_register(x[v]);
      }
      CAMEX_UNROLL_REGISTERS
      for (int m = 0; m < MR; ++m) {
        const auto a = Simd::broadcast(c(o0 + m, k));
        CAMEX_UNROLL_REGISTERS
        for (int v = 0; v < V; ++v) acc[m][v] = Simd::multiply_add(a, x[v], acc[m][v]);
      }
    }
    CAMEX_UNROLL_REGISTERS
    for (int m = 0; m < MR; ++m)
      CAMEX_UNROLL_REGISTERS
      for (int v = 0; v < V; ++v) {
        const auto result = Centred ? Simd::add(acc[m][v], centre_vector(v)) : acc[m][v];
        if constexpr (Stores == BlockStores::streaming) {
          static_assert(sizeof(typename Simd::type) == streaming_store_bytes, "one streaming store per register");
          Simd::store_streaming(out + m * out_stride + v * L, result);
        } else {
          Simd::store(out + m * out_stride + v * L, result);
        }
      }
  } else {
    T acc[MR][W];
    for (int m = 0; m < MR; ++m) {
      CAMEX_VECTOR_LANES
      for (int j = 0; j < W; ++j) acc[m][j] = Accumulate ? out[m * out_stride + j] : T(0);
    }
    for (int k = 0; k < K; ++k) {
      const T* row = rows + k * row_stride;
      for (int m = 0; m < MR; ++m) {
        const T a = c(o0 + m, k);
        CAMEX_VECTOR_LANES
        for (int j = 0; j < W; ++j) acc[m][j] = multiply_add(a, Centred ? row[j] - centre[j] : row[j], acc[m][j]);
      }
    }
    if constexpr (Centred)
      for (int m = 0; m < MR; ++m) {
        CAMEX_VECTOR_LANES
        for (int j = 0; j < W; ++j) acc[m][j] += centre[j];
      }
    for (int m = 0; m < MR; ++m) {
      if constexpr (Stores == BlockStores::streaming && has_streaming_stores<T> && W % streaming_lanes<T> == 0) {
        for (int j = 0; j < W; j += streaming_lanes<T>) store_streaming_vector(out + m * out_stride + j, &acc[m][j]);
      } else {
        CAMEX_VECTOR_LANES
        for (int j = 0; j < W; ++j) out[m * out_stride + j] = acc[m][j];
      }
    }
  }
}

/// Output rows per register block of W columns of T: as many as fill three quarters of the SIMD registers with
/// accumulators (24 of AVX-512's 32), leaving the rest to one input row and a coefficient, and at most 12 rows at
/// the narrow widths of a row's end: 6 rows at 64 floats, 3 at 64 doubles. Without SIMD registers, the counts
/// that suit 64-byte vectors of floats.
template <int W, class T>
inline constexpr int block_rows = [] {
  if constexpr (simd_lanes<T> == 0) {
    return W >= 64 ? 6 : 12;
  } else {
    constexpr int accumulators = simd_register_count * 3 / 4;
    return std::clamp(accumulators / std::max(1, W / std::max(simd_lanes<T>, 1)), 1, 12);
  }
}();

/// The most output rows combine_rows_blocked takes in one register block (at the width it then picks).
template <class T>
inline constexpr int rows_in_one_block = block_rows<16, T>;

template <int W, bool Centred, bool Accumulate, BlockStores Stores, class T>
inline void combine_rows_of_width(int out_rows, int K, const T* rows, std::ptrdiff_t row_stride, const Coefficients<T>& c,
                                  T* out, std::ptrdiff_t out_stride, const T* centre) {
  const auto block = [&]<int MR>(int m) {
    combine_row_block<MR, W, Centred, Accumulate, Stores>(K, rows, row_stride, c, m, out + m * out_stride, out_stride, centre);
  };
  constexpr int MR = block_rows<W, T>;
  int m = 0;
  for (; m + MR <= out_rows; m += MR) block.template operator()<MR>(m);
  if constexpr (MR > 8)
    for (; m + 8 <= out_rows; m += 8) block.template operator()<8>(m);
  for (; m + 4 <= out_rows; m += 4) block.template operator()<4>(m);
  for (; m + 2 <= out_rows; m += 2) block.template operator()<2>(m);
  if (m < out_rows) block.template operator()<1>(m);
}

template <bool Centred, bool Accumulate, BlockStores Stores, class T>
inline void combine_rows_in_blocks(int out_rows, int K, const T* rows, std::ptrdiff_t row_stride, const Coefficients<T>& c,
                                   T* out, std::ptrdiff_t out_stride, int len, const T* centre) {
  int j = 0;
  const auto width = [&]<int W>() {
    combine_rows_of_width<W, Centred, Accumulate, Stores>(out_rows, K, rows + j, row_stride, c, out + j, out_stride,
                                                          Centred ? centre + j : nullptr);
    j += W;
  };
  // The widest blocks that hold every output row at once, so that each input vector is loaded once per tile (an
  // input read again by a second block of rows comes back from L2 when the rows alias in L1, being a multiple of
  // 4 KiB apart: docs/performance.md); 64 columns where no width holds them all.
  if (out_rows <= block_rows<64, T> || out_rows > rows_in_one_block<T>)
    while (j + 64 <= len) width.template operator()<64>();
  else if (out_rows <= block_rows<32, T>)
    while (j + 32 <= len) width.template operator()<32>();
  else
    while (j + 16 <= len) width.template operator()<16>();
  if (j + 32 <= len) width.template operator()<32>();
  if (j + 16 <= len) width.template operator()<16>();
  if (j + 8 <= len) width.template operator()<8>();
  for (int o = 0; o < out_rows; ++o)
    for (int q = j; q < len; ++q) {
      T acc = Accumulate ? out[o * out_stride + q] : T(0);
      for (int k = 0; k < K; ++k) acc = multiply_add(c(o, k), Centred ? rows[k * row_stride + q] - centre[q] : rows[k * row_stride + q], acc);
      out[o * out_stride + q] = Centred ? acc + centre[q] : acc;
    }
}

/// out[o, 0:len) (+)= sum_{k < K} c(o, k) rows[k, 0:len) for all o < out_rows at once: register blocks of 64, 32, 16
/// and 8 columns, then plain loops for the last few. With a centre, out[o] (+)= centre + sum_k c(o, k) (rows[k] -
/// centre), rounded as combine_rows rounds it.
template <class T>
inline void combine_rows_blocked(int out_rows, int K, const T* rows, std::ptrdiff_t row_stride, const Coefficients<T>& c,
                                 T* out, std::ptrdiff_t out_stride, int len, bool accumulate, const T* centre = nullptr) {
  const auto run = [&]<bool Centred, bool Accumulate>() {
    combine_rows_in_blocks<Centred, Accumulate, BlockStores::cached>(out_rows, K, rows, row_stride, c, out, out_stride, len, centre);
  };
  if (centre)
    accumulate ? run.template operator()<true, true>() : run.template operator()<true, false>();
  else
    accumulate ? run.template operator()<false, true>() : run.template operator()<false, false>();
}

/// combine_rows_blocked (writing, not accumulating) into memory past the caches, so the output is never read for
/// ownership. Rows that start on a store boundary leave the registers in non-temporal stores; otherwise groups of
/// up to 16 output rows are finished piece by piece in a 16 KiB buffer and copied out (the same bits either way).
/// Host code only; the caller fences (streaming_fence) before the output is read.
template <class T>
inline void combine_rows_blocked_streaming(int out_rows, int K, const T* rows, std::ptrdiff_t row_stride,
                                           const Coefficients<T>& c, T* out, std::ptrdiff_t out_stride, int len,
                                           const T* centre = nullptr) {
  if (whole_streaming_stores(out, out_rows == 1 ? 0 : static_cast<std::size_t>(out_stride))) {
    if (centre)
      combine_rows_in_blocks<true, false, BlockStores::streaming>(out_rows, K, rows, row_stride, c, out, out_stride, len, centre);
    else
      combine_rows_in_blocks<false, false, BlockStores::streaming>(out_rows, K, rows, row_stride, c, out, out_stride, len, centre);
    return;
  }
  constexpr int capacity = static_cast<int>((16 << 10) / sizeof(T)), group = 16;
  alignas(64) T staged[capacity];
  for (int o0 = 0; o0 < out_rows; o0 += group) {
    const int g = std::min(group, out_rows - o0);
    const int piece = capacity / g / 64 * 64;
    const Coefficients<T> shifted{c.data + o0 * c.out_stride, c.out_stride, c.in_stride};
    for (int q = 0; q < len; q += piece) {
      const int n = std::min(piece, len - q);
      combine_rows_blocked(g, K, rows + q, row_stride, shifted, staged, piece, n, false, centre ? centre + q : nullptr);
      for (int r = 0; r < g; ++r) copy_streaming(out + (o0 + r) * out_stride + q, staged + r * piece, n);
    }
  }
}

/// Longest tile tile_length() returns; mode contractions tile their inner runs to this length too.
inline constexpr int max_tile_length = 4096;

/// Bytes of input tiles a kernel keeps close: the merge streams each input tile once per output row, so its K
/// tiles stay in L1 (16 KiB, half of the smallest L1 data cache camex targets, leaving room for the output tile
/// and the prefetcher); the backward reads its d_merged and expert tiles in two passes, so L2 is close enough.
inline constexpr std::size_t l1_tile_budget = 16 << 10;
inline constexpr std::size_t l2_tile_budget = 256 << 10;

/// Elements of one tile when `in_rows` rows of T must fit in `budget` bytes (a multiple of 64 in [64, 4096]).
template <class T>
inline int tile_length(int in_rows, std::size_t budget = l1_tile_budget) {
  const auto fit = static_cast<int>(std::min<std::size_t>(
      budget / (sizeof(T) * static_cast<std::size_t>(std::max(in_rows, 1))), max_tile_length));
  return std::clamp(fit / 64 * 64, 64, max_tile_length);
}

/// Length of the tile that starts at p0 in a range ending at `end`.
KOKKOS_INLINE_FUNCTION int tile_extent(std::size_t p0, std::size_t end, int tile) {
  return end - p0 < static_cast<std::size_t>(tile) ? static_cast<int>(end - p0) : tile;
}

/// End of chunk c of `chunk` entries in a range of `length` entries (the last chunk may be short).
KOKKOS_INLINE_FUNCTION std::size_t chunk_end(std::size_t c, std::size_t chunk, std::size_t length) {
  return (c + 1) * chunk < length ? (c + 1) * chunk : length;
}

/// out[o, p] = sum_k coef(o, k) * rows[k, p] for o < out_rows, k < in_rows, p < length; with a centre row,
/// out[o, p] = centre[p] + sum_k coef(o, k) * (rows[k, p] - centre[p]) (a merge of deltas that never stores them).
/// With an armed scan the inputs are checked as they are read: rows[k, p] at position k * length + p, the centre's
/// entry p at centre_position + p.
template <class T>
struct RowCombination {
  Coefficients<T> coef;
  const T* rows;
  std::ptrdiff_t row_stride;
  int in_rows;
  T* out;
  std::ptrdiff_t out_stride;
  int out_rows;
  std::size_t length;
  const T* centre = nullptr;
  NonFiniteScan scan{};
  std::size_t centre_position = 0;
};

/// The scan of one tile's inputs, run once the first output row of the tile has read them from memory: they are in
/// L1 then, so the check adds comparisons but no traffic, and it leaves the combination's stream from memory, which
/// overlaps loads with arithmetic, as it is (a scan ahead of it would read each tile alone, the core waiting).
template <class T>
KOKKOS_INLINE_FUNCTION void check_tile_inputs(const RowCombination<T>& op, std::size_t p0, int len) {
  for (int k = 0; k < op.in_rows; ++k)
    op.scan.check(op.rows + k * op.row_stride + p0, len, static_cast<std::size_t>(k) * op.length + p0);
  if (op.centre) op.scan.check(op.centre + p0, len, op.centre_position + p0);
}

/// The tiled schedule on device spaces (a tile per thread, one output row at a time).
template <class T>
struct TiledRowCombination {
  RowCombination<T> op;
  int tile;

  KOKKOS_INLINE_FUNCTION void operator()(std::size_t t) const {
    const std::size_t p0 = t * static_cast<std::size_t>(tile);
    const int len = tile_extent(p0, op.length, tile);
    for (int o = 0; o < op.out_rows; ++o) {
      combine_rows(op.in_rows, op.rows + p0, op.row_stride, op.coef, o, op.out + o * op.out_stride + p0, len,
                   op.centre ? op.centre + p0 : nullptr);
      if (o == 0 && op.scan) check_tile_inputs(op, p0, len);
    }
  }
};

/// One tile of every output row on host spaces: register blocks of output rows (each input vector loaded once
/// feeds several of them), written past the caches when `streaming`. With `ahead`, the tile is combined in pieces
/// of 64 columns (the same bits: each output is its own sum over the inputs) and the lines of `ahead` are asked
/// for evenly between the pieces. Host code only.
template <class T>
inline void combine_tile_on_host(bool streaming, int out_rows, int in_rows, const T* rows, std::ptrdiff_t row_stride,
                                 const Coefficients<T>& c, T* out, std::ptrdiff_t out_stride, int len, const T* centre,
                                 TilePrefetch<T>* ahead = nullptr) {
  const auto combine = [&](int q, int n) {
    const T* centre_q = centre ? centre + q : nullptr;
    if (streaming)
      combine_rows_blocked_streaming(out_rows, in_rows, rows + q, row_stride, c, out + q, out_stride, n, centre_q);
    else
      combine_rows_blocked(out_rows, in_rows, rows + q, row_stride, c, out + q, out_stride, n, false, centre_q);
  };
  if (!ahead) {
    combine(0, len);
    return;
  }
  constexpr int piece = 64;
  const int pieces = (len + piece - 1) / piece;
  const int per_piece = (ahead->remaining() + pieces - 1) / pieces;
  for (int q = 0; q < len; q += piece) {
    combine(q, std::min(piece, len - q));
    ahead->issue(per_piece);
  }
}

/// The tiled schedule on host spaces (its operator is host code).
template <class T>
struct HostTiledRowCombination {
  RowCombination<T> op;
  int tile;
  bool streaming;

  void operator()(std::size_t t) const {
    const std::size_t p0 = t * static_cast<std::size_t>(tile);
    const int len = tile_extent(p0, op.length, tile);
    combine_tile_on_host(streaming, op.out_rows, op.in_rows, op.rows + p0, op.row_stride, op.coef, op.out + p0,
                         op.out_stride, len, op.centre ? op.centre + p0 : nullptr);
    if (op.scan) check_tile_inputs(op, p0, len);
    if (streaming) streaming_fence();
  }
};

/// Consecutive parameters one lane of the lane schedule takes: 16 bytes of float, one vector load per row.
inline constexpr int lane_entries = 4;

/// lane_entries values of T as one aligned object, so a device loads or stores them in one instruction.
template <class T>
struct alignas(lane_entries * sizeof(T)) LaneVector {
  T v[lane_entries];
};

/// Whether a row of `stride` elements from `data` keeps every lane's entries on a LaneVector boundary.
template <class T>
bool lane_vectors_fit(const T* data, std::ptrdiff_t stride) {
  return reinterpret_cast<std::uintptr_t>(data) % sizeof(LaneVector<T>) == 0 && stride % lane_entries == 0;
}

/// x[0, n) = row[0, n): one vector load when `Vectors` (the caller checked lane_vectors_fit) and the lane is whole.
template <bool Vectors, class T>
KOKKOS_FORCEINLINE_FUNCTION void load_lane(const T* row, int n, T (&x)[lane_entries]) {
  if (Vectors && n == lane_entries) {
    const LaneVector<T> q = *reinterpret_cast<const LaneVector<T>*>(row);
    for (int j = 0; j < lane_entries; ++j) x[j] = q.v[j];
  } else {
    for (int j = 0; j < n; ++j) x[j] = row[j];
  }
}

template <bool Vectors, class T>
KOKKOS_FORCEINLINE_FUNCTION void store_lane(T* row, int n, const T (&x)[lane_entries]) {
  if (Vectors && n == lane_entries) {
    LaneVector<T> q;
    for (int j = 0; j < lane_entries; ++j) q.v[j] = x[j];
    *reinterpret_cast<LaneVector<T>*>(row) = q;
  } else {
    for (int j = 0; j < n; ++j) row[j] = x[j];
  }
}

/// Coefficients a team copies into its scratch memory before combining (16 KiB); a larger matrix is read where it
/// lies, through the cache.
inline constexpr std::size_t staged_coefficient_bytes = 16 << 10;

/// The lane schedule: each lane combines lane_entries consecutive parameters of every output row, adjacent lanes
/// adjacent runs, so a warp reads whole lines of each input row in vector loads. A team first copies the
/// coefficient matrix into its scratch memory, where every lane reads it without touching the memory bus. Each
/// output is the same chain of fused multiply-adds over k in order as the tiled schedule's, the centre added last.
template <class ExecSpace, class T, bool Vectors>
struct LaneRowCombination {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  using Scratch = Kokkos::View<T*, typename ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  RowCombination<T> op;
  bool staged;

  /// Scratch bytes per team: the coefficient matrix, or 0 where it is too large to stage.
  static std::size_t scratch_bytes(const RowCombination<T>& op) {
    const std::size_t bytes = Scratch::shmem_size(static_cast<std::size_t>(op.out_rows) * static_cast<std::size_t>(op.in_rows));
    return bytes <= staged_coefficient_bytes ? bytes : 0;
  }

  KOKKOS_INLINE_FUNCTION void operator()(const Member& team) const {
    Coefficients<T> c = op.coef;
    if (staged) {
      const int in_rows = op.in_rows;
      const Scratch shared(team.team_scratch(0), static_cast<std::size_t>(op.out_rows) * static_cast<std::size_t>(in_rows));
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, op.out_rows * in_rows),
                           [&](int e) { shared(e) = op.coef(e / in_rows, e % in_rows); });
      team.team_barrier();
      c = {shared.data(), in_rows, 1};
    }
    const std::size_t p = (static_cast<std::size_t>(team.league_rank()) * team.team_size() + team.team_rank()) * lane_entries;
    if (p >= op.length) return;
    const int n = tile_extent(p, op.length, lane_entries);
    if (op.scan) check_tile_inputs(op, p, n);
    T centre[lane_entries] = {};
    if (op.centre) load_lane<Vectors>(op.centre + p, n, centre);
    for (int o = 0; o < op.out_rows; ++o) {
      T acc[lane_entries] = {};
      for (int k = 0; k < op.in_rows; ++k) {
        T x[lane_entries] = {};
        load_lane<Vectors>(op.rows + k * op.row_stride + p, n, x);
        const T a = c(o, k);
        for (int j = 0; j < lane_entries; ++j) acc[j] = multiply_add(a, x[j] - centre[j], acc[j]);
      }
      if (op.centre)
        for (int j = 0; j < lane_entries; ++j) acc[j] += centre[j];
      store_lane<Vectors>(op.out + o * op.out_stride + p, n, acc);
    }
  }
};

/// Lanes of one team of the lane schedule: one on host spaces (a thread is a lane there), 256 elsewhere.
template <class ExecSpace>
constexpr int lane_team_size() {
  return static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible) ? 1 : 256;
}

template <class ExecSpace, class T, bool Vectors>
void launch_lane_row_combination(const ExecSpace& space, const RowCombination<T>& op) {
  using Lanes = LaneRowCombination<ExecSpace, T, Vectors>;
  constexpr int team = lane_team_size<ExecSpace>();
  const std::size_t per_team = static_cast<std::size_t>(team) * lane_entries;
  const std::size_t bytes = Lanes::scratch_bytes(op);
  const auto policy = Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>((op.length + per_team - 1) / per_team), team)
                          .set_scratch_size(0, Kokkos::PerTeam(bytes));
  Kokkos::parallel_for("camex::row_combination[lane]", policy, Lanes{op, bytes > 0});
}

/// Runs `op` on `space` with the given schedule.
template <class ExecSpace, class T>
void row_combination(const ExecSpace& space, Schedule schedule, const RowCombination<T>& op) {
  if (resolve<ExecSpace>(schedule) == Schedule::tiled) {
    const int tile = tile_length<T>(op.in_rows);
    const auto policy = Kokkos::RangePolicy<ExecSpace>(space, 0, (op.length + tile - 1) / tile);
    if constexpr (static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible))
      Kokkos::parallel_for("camex::row_combination[tiled]", policy,
                           HostTiledRowCombination<T>{op, tile, prefer_streaming_stores(sizeof(T) * op.length * static_cast<std::size_t>(op.out_rows))});
    else
      Kokkos::parallel_for("camex::row_combination[tiled]", policy, TiledRowCombination<T>{op, tile});
  } else if (op.length > 0 && op.out_rows > 0) {
    if (lane_vectors_fit(op.rows, op.row_stride) && lane_vectors_fit(op.out, op.out_stride) &&
        (!op.centre || lane_vectors_fit(op.centre, 0)))
      launch_lane_row_combination<ExecSpace, T, true>(space, op);
    else
      launch_lane_row_combination<ExecSpace, T, false>(space, op);
  }
}

/// Calls f(p0, len) on consecutive pieces [p0, p0 + len) covering [0, length): tiles of `tile` entries on host
/// spaces (so f can vectorise along them), lane_entries consecutive entries per lane elsewhere (a lane's reads of
/// one row fall in one line; a counter-based draw fills one Philox block of four words per row).
template <class ExecSpace, class F>
void for_each_tile(const ExecSpace& space, const char* label, std::size_t length, int tile, const F& f) {
  if constexpr (static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible)) {
    Kokkos::parallel_for(label, Kokkos::RangePolicy<ExecSpace>(space, 0, (length + tile - 1) / tile), [=](std::size_t t) {
      const std::size_t p0 = t * static_cast<std::size_t>(tile);
      f(p0, tile_extent(p0, length, tile));
    });
  } else {
    Kokkos::parallel_for(label, Kokkos::RangePolicy<ExecSpace>(space, 0, (length + lane_entries - 1) / lane_entries),
                         KOKKOS_LAMBDA(std::size_t lane) {
                           const std::size_t p0 = lane * lane_entries;
                           f(p0, tile_extent(p0, length, lane_entries));
                         });
  }
}

/// Rows produced on demand instead of read from memory. A source has `int count() const` rows and
///   generate(p0, len, out, stride): writes entries [p0, p0 + len) of row k to out[k * stride + (0 .. len)],
/// callable in device code with any p0 and len (a lane passes len = 1).
template <class S, class T>
concept RowSource = requires(const S& source, std::size_t p0, int len, T* out, std::ptrdiff_t stride) {
  { source.count() } -> std::convertible_to<int>;
  source.generate(p0, len, out, stride);
};

/// Writes every row of `source` to out[k * stride + p], p < length.
template <class ExecSpace, class T, RowSource<T> Source>
void materialise_rows(const ExecSpace& space, const Source& source, T* out, std::ptrdiff_t stride, std::size_t length) {
  for_each_tile(space, "camex::materialise_rows", length, tile_length<T>(source.count()),
                KOKKOS_LAMBDA(std::size_t p0, int len) { source.generate(p0, len, out + p0, stride); });
}

/// Elements of T a generated tile holds: the input rows of one tile, generated into L1 and combined from there.
template <class T>
inline constexpr int generated_tile_capacity = static_cast<int>(l1_tile_budget / sizeof(T));

/// Whether `rows` generated rows fit one tile of at least 64 entries (else materialise them and combine those).
template <class T>
constexpr bool generated_rows_fit(int rows) {
  return rows >= 1 && rows * 64 <= generated_tile_capacity<T>;
}

/// out[o, p] = sum_k coef(o, k) R[k, p] with R produced by `source` tile by tile, never stored: host spaces only.
template <class T, class Source>
struct GeneratedRowCombination {
  Coefficients<T> coef;
  Source source;
  T* out;
  std::ptrdiff_t out_stride;
  int out_rows;
  std::size_t length;
  int tile;
  bool streaming;

  void operator()(std::size_t t) const {
    const std::size_t p0 = t * static_cast<std::size_t>(tile);
    const int len = tile_extent(p0, length, tile);
    alignas(64) T rows[generated_tile_capacity<T>];
    source.generate(p0, len, rows, tile);
    combine_tile_on_host<T>(streaming, out_rows, source.count(), rows, tile, coef, out + p0, out_stride, len, nullptr);
    if (streaming) streaming_fence();
  }
};

template <class ExecSpace, class T, RowSource<T> Source>
void generated_row_combination(const ExecSpace& space, const Coefficients<T>& coef, const Source& source, T* out,
                               std::ptrdiff_t out_stride, int out_rows, std::size_t length) {
  static_assert(static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible),
                "generated rows are combined on host spaces; device spaces combine materialised rows");
  const int in_rows = source.count();
  const int tile = std::min(tile_length<T>(in_rows), generated_tile_capacity<T> / in_rows / 64 * 64);
  Kokkos::parallel_for("camex::row_combination[generated]", Kokkos::RangePolicy<ExecSpace>(space, 0, (length + tile - 1) / tile),
                       GeneratedRowCombination<T, Source>{coef, source, out, out_stride, out_rows, length, tile,
                                                          prefer_streaming_stores(sizeof(T) * length * static_cast<std::size_t>(out_rows))});
}

}  // namespace camex::detail
