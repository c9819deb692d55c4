#pragma once
// Mode products of a stack of tensors with one small square factor per tensor, and their contraction (the factor
// gradient). A tensor of P entries is seen, for mode k of extent d, as [outer, d, inner] row-major, and
//   mode product:   out[o, a, t] (+)= sum_a' F[a, a'] in[o, a', t]      (F^T with `transpose`)
//   contraction:    G[a, a'] = sum_{o, t} v[o, a, t] y[o, a', t]          (the gradient of F given v = d out)
// The curvature transform (spec §4.5) is four of these per expert and rank; never an (O I) x (O I) matrix.
//
// Host schedule: where the mode has a long inner run (>= 8), each work item is one tile of that run and the d
// output rows are linear combinations of the d input rows (the row-combination primitive, vectorised along the
// run). Where the run is short (the last mode), each (o, t) fibre is gathered and multiplied by the factor's
// transpose held row-major, which vectorises along a. Device schedule: one lane per output entry.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>

#include "camex/core/workspace.hpp"
#include "camex/detail/row_combination.hpp"

namespace camex::detail {

/// One mode of a tensor of `outer * extent * inner` entries.
struct Mode {
  std::size_t outer, extent, inner;
  std::size_t size() const { return outer * extent * inner; }
};

/// A stack of n tensors (rows of a matrix) and one d x d factor per tensor, consecutive in `factors`.
template <class T>
struct ModeOperands {
  const T* in;
  std::ptrdiff_t in_stride;
  T* out;
  std::ptrdiff_t out_stride;
  const T* factors;
  std::size_t tensors;
};

/// Largest factor extent the host fibre path stages on the stack.
inline constexpr std::size_t max_mode_extent = 1024;

/// Scratch elements mode_product needs for `tensors` factors of extent d (the transposed factors of a fibre pass).
inline std::size_t mode_product_scratch(std::size_t tensors, const Mode& mode) {
  return mode.inner < 8 ? tensors * mode.extent * mode.extent : 0;
}

template <class ExecSpace, class T>
void mode_product(const ExecSpace& space, const ModeOperands<T>& op, const Mode& mode, bool transpose, bool accumulate,
                  const typename WorkspaceCarver<ExecSpace>::template Array<T>& scratch) {
  const std::size_t d = mode.extent, inner = mode.inner, outer = mode.outer;
  constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);
  if constexpr (on_host) {
    if (inner >= 8) {
      const int tile = std::min<int>(static_cast<int>(std::min<std::size_t>(inner, max_tile_length)), tile_length<T>(static_cast<int>(d)));
      const std::size_t tiles = (inner + tile - 1) / tile;
      Kokkos::parallel_for(
          "camex::mode_product[rows]", Kokkos::RangePolicy<ExecSpace>(space, 0, op.tensors * outer * tiles),
          [=](std::size_t w) {
            const std::size_t i = w / (outer * tiles), o = w / tiles % outer, t0 = w % tiles * tile;
            const int len = tile_extent(t0, inner, tile);
            const T* f = op.factors + i * d * d;
            const Coefficients<T> c = transpose ? Coefficients<T>{f, 1, static_cast<std::ptrdiff_t>(d)}
                                                : Coefficients<T>{f, static_cast<std::ptrdiff_t>(d), 1};
            const T* in = op.in + i * op.in_stride + o * d * inner + t0;
            T* out = op.out + i * op.out_stride + o * d * inner + t0;
            T staged[max_tile_length];
            for (std::size_t a = 0; a < d; ++a) {
              T* row = out + a * inner;
              combine_rows(static_cast<int>(d), in, static_cast<std::ptrdiff_t>(inner), c, static_cast<std::ptrdiff_t>(a),
                           accumulate ? staged : row, len);
              if (accumulate) {
                CAMEX_IVDEP
                for (int t = 0; t < len; ++t) row[t] += staged[t];
              }
            }
          });
      return;
    }
    // Short runs: out fibre = G^T-combination of the d factor rows, G = F^T (or F for the transposed product)
    // held row-major so that row a' of G is contiguous.
    T* g = scratch.data();
    Kokkos::parallel_for("camex::mode_product[transpose factors]", Kokkos::RangePolicy<ExecSpace>(space, 0, op.tensors * d * d),
                         [=](std::size_t w) {
                           const std::size_t i = w / (d * d), r = w / d % d, c = w % d;
                           g[w] = transpose ? op.factors[i * d * d + r * d + c] : op.factors[i * d * d + c * d + r];
                         });
    const std::size_t fibres = outer * inner, block = 64;
    const std::size_t blocks = (fibres + block - 1) / block;
    Kokkos::parallel_for(
        "camex::mode_product[fibres]", Kokkos::RangePolicy<ExecSpace>(space, 0, op.tensors * blocks), [=](std::size_t w) {
          const std::size_t i = w / blocks, f0 = w % blocks * block, f1 = std::min(fibres, f0 + block);
          const T* in = op.in + i * op.in_stride;
          T* out = op.out + i * op.out_stride;
          T x[max_mode_extent], y[max_mode_extent];
          for (std::size_t f = f0; f < f1; ++f) {
            const std::size_t base = f / inner * d * inner + f % inner;
            for (std::size_t a = 0; a < d; ++a) x[a] = in[base + a * inner];
            combine_rows(static_cast<int>(d), g + i * d * d, static_cast<std::ptrdiff_t>(d), Coefficients<T>{x, 0, 1}, 0, y,
                         static_cast<int>(d));
            for (std::size_t a = 0; a < d; ++a) out[base + a * inner] = accumulate ? out[base + a * inner] + y[a] : y[a];
          }
        });
  } else {
    (void)scratch;
    const std::size_t size = mode.size();
    Kokkos::parallel_for(
        "camex::mode_product[lane]", Kokkos::RangePolicy<ExecSpace>(space, 0, op.tensors * size), KOKKOS_LAMBDA(std::size_t w) {
          const std::size_t i = w / size, e = w % size;
          const std::size_t o = e / (d * inner), a = e / inner % d, t = e % inner;
          const T* f = op.factors + i * d * d;
          const T* in = op.in + i * op.in_stride + o * d * inner + t;
          T acc = 0;
          for (std::size_t k = 0; k < d; ++k) acc += (transpose ? f[k * d + a] : f[a * d + k]) * in[k * inner];
          T& out = op.out[i * op.out_stride + e];
          out = accumulate ? out + acc : acc;
        });
  }
}

/// Chunks of the outer index of a contraction: their number depends only on `outer`, so per-chunk partial sums
/// added in chunk order give the same gradient for any thread count.
struct ContractionChunking {
  std::size_t chunk, chunks;
  explicit ContractionChunking(std::size_t outer) : chunk((outer + 63) / 64), chunks((outer + chunk - 1) / chunk) {}
};

inline std::size_t mode_contraction_scratch(std::size_t tensors, const Mode& mode) {
  return tensors * ContractionChunking(mode.outer).chunks * mode.extent * mode.extent;
}

/// grad[i][a, a'] = sum_{o, t} v_i[o, a, t] y_i[o, a', t] for each tensor i (grad: `tensors` d x d blocks).
/// `partial` holds mode_contraction_scratch doubles.
template <class ExecSpace, class T>
void mode_contraction(const ExecSpace& space, const T* v, std::ptrdiff_t v_stride, const T* y, std::ptrdiff_t y_stride,
                      std::size_t tensors, const Mode& mode, T* grad,
                      const typename WorkspaceCarver<ExecSpace>::template Array<double>& partial) {
  const std::size_t d = mode.extent, inner = mode.inner, outer = mode.outer;
  const ContractionChunking ch(outer);
  const std::size_t chunk = ch.chunk, chunks = ch.chunks;
  double* part = partial.data();
  constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);
  if constexpr (on_host) {
    const int tile = static_cast<int>(std::min<std::size_t>(inner, max_tile_length));
    Kokkos::parallel_for(
        "camex::mode_contraction[chunks]", Kokkos::RangePolicy<ExecSpace>(space, 0, tensors * chunks), [=](std::size_t w) {
          const std::size_t i = w / chunks, c = w % chunks;
          double* acc = part + w * d * d;
          std::fill(acc, acc + d * d, 0.0);
          const T* vi = v + i * v_stride;
          const T* yi = y + i * y_stride;
          for (std::size_t o = c * chunk, end = chunk_end(c, chunk, outer); o < end; ++o) {
            const T* vo = vi + o * d * inner;
            const T* yo = yi + o * d * inner;
            if (inner >= 8) {
              for (std::size_t t0 = 0; t0 < inner; t0 += tile) {
                const int len = tile_extent(t0, inner, tile);
                for (std::size_t a = 0; a < d; ++a)
                  for_each_block_of_8<TileDots>(static_cast<int>(d), vo + a * inner + t0, yo + t0,
                                                static_cast<std::ptrdiff_t>(inner), len, acc + a * d);
              }
            } else {
              for (std::size_t t = 0; t < inner; ++t)
                for (std::size_t a = 0; a < d; ++a) {
                  const double va = static_cast<double>(vo[a * inner + t]);
                  double* row = acc + a * d;
                  CAMEX_IVDEP
                  for (std::size_t b = 0; b < d; ++b) row[b] += va * static_cast<double>(yo[b * inner + t]);
                }
            }
          }
        });
  } else {
    Kokkos::parallel_for(
        "camex::mode_contraction[lane]", Kokkos::RangePolicy<ExecSpace>(space, 0, tensors * chunks * d * d),
        KOKKOS_LAMBDA(std::size_t w) {
          const std::size_t i = w / (chunks * d * d), c = w / (d * d) % chunks, a = w / d % d, b = w % d;
          double acc = 0;
          for (std::size_t o = c * chunk, end = chunk_end(c, chunk, outer); o < end; ++o)
            for (std::size_t t = 0; t < inner; ++t)
              acc += static_cast<double>(v[i * v_stride + (o * d + a) * inner + t]) *
                     static_cast<double>(y[i * y_stride + (o * d + b) * inner + t]);
          part[w] = acc;
        });
  }
  Kokkos::parallel_for("camex::mode_contraction[sum]", Kokkos::RangePolicy<ExecSpace>(space, 0, tensors * d * d),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t i = w / (d * d), e = w % (d * d);
                         double acc = 0;
                         for (std::size_t c = 0; c < chunks; ++c) acc += part[(i * chunks + c) * d * d + e];
                         grad[w] = static_cast<T>(acc);
                       });
}

}  // namespace camex::detail
