#pragma once
// Mode products of a stack of tensors with one small square factor per tensor, and their contraction (the factor
// gradient). A tensor of P entries is seen, for mode k of extent d, as [outer, d, inner] row-major, and
//   mode product:   out[o, a, t] (+)= sum_a' F[a, a'] in[o, a', t]      (F^T with `transpose`)
//   contraction:    G[a, a'] = sum_{o, t} v[o, a, t] y[o, a', t]          (the gradient of F given v = d out)
// The curvature transform (docs/algorithms.md §4.5) is four of these per expert and rank; never an (O I) x (O I) matrix.
//
// Host schedule: the products are small GEMMs run by the register-blocked row combination. Where the mode has
// inner runs, the d output rows of a column tile combine its d input rows with the factor's rows as coefficients.
// In the last mode (inner = 1) the roles swap: each fibre is a contiguous row of coefficients and the rows combined
// are those of the factor's transpose. The contraction is a d x d GEMM with a long inner dimension, run by Eigen
// in blocks (contract_chunk_on_host). On Kokkos' Cuda space the products are cuBLAS's strided-batched GEMMs
// (camex::gemm): per tensor, a batch over the outer slices sharing one factor; in the last mode one batch over the
// tensors. Other device spaces: one lane per output entry. On device spaces the contraction is the team schedule
// (TeamContraction): 16 x 16 output blocks per team over chunks of the (o, t) terms, both operands staged through
// scratch memory in coalesced runs, every term added in double in a fixed order (the same bits for any team size,
// so the host tests run it too).

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include <Eigen/Core>

#include "camex/core/workspace.hpp"
#include "camex/kernels/gemm.hpp"
#include "camex/kernels/row_combination.hpp"

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

/// Where one column tile of one (tensor, outer) slice of the rows schedule lies.
template <class T>
struct ProductTile {
  const T* in;
  T* out;
  const T* factor;
  int len;
};

/// Columns of one host work item of a mode with inner runs, and fibres of one work item of the last mode.
inline constexpr std::size_t product_tile = 1024;
inline constexpr std::size_t fibre_block = 96;

/// Scratch elements mode_product needs for `tensors` factors of extent d (the transposed factors of the last mode).
inline std::size_t mode_product_scratch(std::size_t tensors, const Mode& mode) {
  return mode.inner == 1 ? tensors * mode.extent * mode.extent : 0;
}

template <class ExecSpace, class T>
void mode_product(const ExecSpace& space, const ModeOperands<T>& op, const Mode& mode, bool transpose, bool accumulate,
                  const typename WorkspaceCarver<ExecSpace>::template Array<T>& scratch) {
  const std::size_t d = mode.extent, inner = mode.inner, outer = mode.outer;
  constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);
  if constexpr (on_host) {
    const int K = static_cast<int>(d);
    if (inner > 1) {
      // out[o] (d x inner) = F in[o]: a work item is one column tile of one (tensor, outer) slice, its d input
      // rows (d * tile entries, at most 256 KiB) kept in L2 while every register block of output rows reads them.
      // Where a tile is narrower than its slice, its rows are d runs with gaps between them, which the hardware
      // prefetcher does not follow: while an item computes, the next item's input and output lines are asked for
      // (a store that misses waits for the line it writes). Tiles of whole slices are one contiguous run.
      const std::size_t tile = inner < product_tile ? inner : product_tile, tiles = (inner + tile - 1) / tile;
      const std::size_t items = op.tensors * outer * tiles;
      const bool gapped = tile < inner;
      const auto stride = static_cast<std::ptrdiff_t>(inner);
      const auto place = [=](std::size_t w) {
        const std::size_t i = w / (outer * tiles), o = w / tiles % outer, t0 = w % tiles * tile;
        return ProductTile<T>{op.in + i * op.in_stride + o * d * inner + t0, op.out + i * op.out_stride + o * d * inner + t0,
                              op.factors + i * d * d, tile_extent(t0, inner, static_cast<int>(tile))};
      };
      Kokkos::parallel_for(
          "camex::mode_product[rows]", Kokkos::RangePolicy<ExecSpace>(space, 0, items), [=](std::size_t w) {
            const ProductTile<T> now = place(w);
            const Coefficients<T> c = transpose ? Coefficients<T>{now.factor, 1, static_cast<std::ptrdiff_t>(d)}
                                                : Coefficients<T>{now.factor, static_cast<std::ptrdiff_t>(d), 1};
            TilePrefetch<T> ahead;
            if (gapped && w + 1 < items) {
              const ProductTile<T> next = place(w + 1);
              ahead = TilePrefetch<T>({next.in, stride, K}, {next.out, stride, K}, next.len);
            }
            constexpr int piece = 64;
            const int pieces = (now.len + piece - 1) / piece, per_piece = (ahead.remaining() + pieces - 1) / pieces;
            for (int q = 0; q < now.len; q += piece) {
              combine_rows_blocked(K, K, now.in + q, stride, c, now.out + q, stride, std::min(piece, now.len - q), accumulate);
              ahead.issue(per_piece);
            }
          });
      return;
    }
    // The last mode: every fibre is a contiguous row, so out (outer x d) = in (outer x d) G with G = F^T (or F for
    // the transposed product) row-major: the fibres are the coefficients and the d rows of G the combined rows.
    const T* g = op.factors;
    if (!transpose) {
      T* staged = scratch.data();
      Kokkos::parallel_for("camex::mode_product[transpose factors]", Kokkos::RangePolicy<ExecSpace>(space, 0, op.tensors * d * d),
                           [=](std::size_t w) {
                             const std::size_t i = w / (d * d), r = w / d % d, c = w % d;
                             staged[w] = op.factors[i * d * d + c * d + r];
                           });
      g = staged;
    }
    const std::size_t blocks = (outer + fibre_block - 1) / fibre_block;
    Kokkos::parallel_for(
        "camex::mode_product[fibres]", Kokkos::RangePolicy<ExecSpace>(space, 0, op.tensors * blocks), [=](std::size_t w) {
          const std::size_t i = w / blocks, f0 = w % blocks * fibre_block;
          const std::size_t at = f0 * d;
          combine_rows_blocked(static_cast<int>(std::min(fibre_block, outer - f0)), K, g + i * d * d,
                               static_cast<std::ptrdiff_t>(d),
                               Coefficients<T>{op.in + i * op.in_stride + at, static_cast<std::ptrdiff_t>(d), 1},
                               op.out + i * op.out_stride + at, static_cast<std::ptrdiff_t>(d), K, accumulate);
        });
#if defined(KOKKOS_ENABLE_CUDA)
  } else if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    (void)scratch;
    const int D = static_cast<int>(d);
    const auto flag = [](bool yes) { return yes ? Transpose::yes : Transpose::no; };
    const T beta = accumulate ? T(1) : T(0);
    if (inner > 1) {
      // out[o] (d x inner) = F in[o] (or F^T in[o]) for every outer slice o: one batch per tensor, its factor shared.
      const auto slice = static_cast<std::ptrdiff_t>(d * inner);
      for (std::size_t i = 0; i < op.tensors; ++i)
        gemm(space, GemmBatch<T>{.transpose_a = flag(transpose), .transpose_b = Transpose::no, .m = D,
                                 .n = static_cast<int>(inner), .k = D, .alpha = 1, .a = op.factors + i * d * d, .lda = D,
                                 .stride_a = 0, .b = op.in + i * op.in_stride, .ldb = static_cast<std::ptrdiff_t>(inner),
                                 .stride_b = slice, .beta = beta, .c = op.out + i * op.out_stride,
                                 .ldc = static_cast<std::ptrdiff_t>(inner), .stride_c = slice, .batch = static_cast<int>(outer)});
      return;
    }
    // The last mode: out (outer x d) = in (outer x d) F^T (or in F), one batch over the tensors.
    gemm(space, GemmBatch<T>{.transpose_a = Transpose::no, .transpose_b = flag(!transpose), .m = static_cast<int>(outer),
                             .n = D, .k = D, .alpha = 1, .a = op.in, .lda = D, .stride_a = op.in_stride, .b = op.factors,
                             .ldb = D, .stride_b = static_cast<std::ptrdiff_t>(d * d), .beta = beta, .c = op.out,
                             .ldc = D, .stride_c = op.out_stride, .batch = static_cast<int>(op.tensors)});
#endif
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

/// Chunks of a contraction's summation axis (the outer index on host spaces, where a work item contracts whole o
/// slices; every (o, t) term on the others, where a mode with few slices still gives every team work): their number
/// depends only on the axis' length, so per-chunk partial sums added in chunk order give the same gradient for any
/// thread count.
struct ContractionChunking {
  std::size_t chunk, chunks;
  explicit ContractionChunking(std::size_t length) : chunk((length + 63) / 64), chunks((length + chunk - 1) / chunk) {}
};

/// Doubles of partial sums mode_contraction needs (the term chunks are never fewer than the outer chunks).
inline std::size_t mode_contraction_scratch(std::size_t tensors, const Mode& mode) {
  return tensors * ContractionChunking(mode.outer * mode.inner).chunks * mode.extent * mode.extent;
}

/// The team schedule of a contraction: a team takes one block of contraction_block_rows x contraction_block_rows
/// outputs (a, b) of one tensor and one chunk of terms s = o * inner + t, copies the next contraction_terms terms of
/// its rows of v and y into scratch memory (adjacent lanes reading adjacent addresses: along t, or along a in the
/// last mode), and each output adds its terms in s order in double, multiply-adds written out: the same bits for
/// any team size, so a host team of one runs what a GPU block of 256 runs.
inline constexpr int contraction_block_rows = 16;
inline constexpr int contraction_terms = 32;

template <class ExecSpace, class T>
struct TeamContraction {
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  template <class U>
  using Scratch = Kokkos::View<U*, typename ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  static constexpr int rows = contraction_block_rows, outputs = rows * rows, staged = rows * contraction_terms;

  const T* v;
  std::ptrdiff_t v_stride;
  const T* y;
  std::ptrdiff_t y_stride;
  std::size_t d, inner, terms, chunk, chunks, blocks;  // blocks: of rows along a (and along b)
  double* part;

  static std::size_t scratch_bytes() {
    return 2 * Scratch<T>::shmem_size(staged) + Scratch<double>::shmem_size(outputs);
  }

  KOKKOS_INLINE_FUNCTION void operator()(const Member& team) const {
    const std::size_t w = team.league_rank();
    const std::size_t i = w / (chunks * blocks * blocks), c = w / (blocks * blocks) % chunks;
    const std::size_t a0 = w / blocks % blocks * rows, b0 = w % blocks * rows;
    const Scratch<T> vt(team.team_scratch(0), staged), yt(team.team_scratch(0), staged);
    const Scratch<double> acc(team.team_scratch(0), outputs);
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, outputs), [&](int e) { acc(e) = 0; });
    const std::size_t end = chunk_end(c, chunk, terms);
    const bool last_mode = inner == 1;
    for (std::size_t s0 = c * chunk; s0 < end; s0 += contraction_terms) {
      const int count = end - s0 < static_cast<std::size_t>(contraction_terms) ? static_cast<int>(end - s0) : contraction_terms;
      team.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, staged), [&](int e) {
        const int r = last_mode ? e % rows : e / contraction_terms, q = last_mode ? e / rows : e % contraction_terms;
        const std::size_t s = s0 + q, o = s / inner, t = s % inner;
        const bool inside = q < count;
        const std::size_t a = a0 + r, b = b0 + r;
        vt(r * contraction_terms + q) = inside && a < d ? v[i * v_stride + (o * d + a) * inner + t] : T(0);
        yt(r * contraction_terms + q) = inside && b < d ? y[i * y_stride + (o * d + b) * inner + t] : T(0);
      });
      team.team_barrier();
      Kokkos::parallel_for(Kokkos::TeamThreadRange(team, outputs), [&](int e) {
        const T* va = vt.data() + e / rows * contraction_terms;
        const T* yb = yt.data() + e % rows * contraction_terms;
        double sum = acc(e);
        for (int q = 0; q < count; ++q) sum = multiply_add(static_cast<double>(va[q]), static_cast<double>(yb[q]), sum);
        acc(e) = sum;
      });
    }
    team.team_barrier();
    Kokkos::parallel_for(Kokkos::TeamThreadRange(team, outputs), [&](int e) {
      const std::size_t a = a0 + e / rows, b = b0 + e % rows;
      if (a < d && b < d) part[(i * chunks + c) * d * d + a * d + b] = acc(e);
    });
  }
};

/// Terms of a contraction summed by one GEMM in the scalar type before they are added to the double accumulator:
/// long enough for Eigen's kernel to run at speed, short enough that float rounding stays at GEMM level.
inline constexpr std::size_t contraction_block = 1024;

/// acc (d x d, double, overwritten) = sum over o in [o0, o1) and t of v[o, a, t] y[o, a', t], as GEMMs of at most
/// contraction_block terms: straight from the tensors where a block is one fibre run (inner == 1: rows of o; one o
/// per block: columns of t), else from the block's o slices packed side by side into [d, block] matrices.
template <class T>
void contract_chunk_on_host(const T* v, const T* y, const Mode& mode, std::size_t o0, std::size_t o1, double* acc) {
  using Rows = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Map = Eigen::Map<const Rows, 0, Eigen::OuterStride<>>;
  const auto d = static_cast<Eigen::Index>(mode.extent);
  const std::size_t inner = mode.inner, slice = mode.extent * inner;
  Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> total(acc, d, d);
  total.setZero();
  Rows block(d, d);
  const auto add = [&] { total += block.template cast<double>(); };
  if (inner == 1) {
    for (std::size_t b0 = o0; b0 < o1; b0 += contraction_block) {
      const auto len = static_cast<Eigen::Index>(std::min(contraction_block, o1 - b0));
      block.noalias() = Map(v + b0 * slice, len, d, Eigen::OuterStride<>(d)).transpose() *
                        Map(y + b0 * slice, len, d, Eigen::OuterStride<>(d));
      add();
    }
    return;
  }
  if (inner >= contraction_block / 2) {
    for (std::size_t o = o0; o < o1; ++o)
      for (std::size_t t0 = 0; t0 < inner; t0 += contraction_block) {
        const auto len = static_cast<Eigen::Index>(std::min(contraction_block, inner - t0));
        const auto stride = Eigen::OuterStride<>(static_cast<Eigen::Index>(inner));
        block.noalias() = Map(v + o * slice + t0, d, len, stride) * Map(y + o * slice + t0, d, len, stride).transpose();
        add();
      }
    return;
  }
  const std::size_t per_block = contraction_block / inner;
  // Per thread and kept between calls: a fresh buffer per chunk would be fresh pages per chunk.
  thread_local Rows packed_v, packed_y;
  packed_v.resize(d, static_cast<Eigen::Index>(per_block * inner));
  packed_y.resize(d, static_cast<Eigen::Index>(per_block * inner));
  for (std::size_t b0 = o0; b0 < o1; b0 += per_block) {
    const std::size_t count = std::min(per_block, o1 - b0);
    for (std::size_t q = 0; q < count; ++q)
      for (Eigen::Index a = 0; a < d; ++a) {
        const std::size_t at = (b0 + q) * slice + static_cast<std::size_t>(a) * inner;
        std::copy(v + at, v + at + inner, packed_v.row(a).data() + q * inner);
        std::copy(y + at, y + at + inner, packed_y.row(a).data() + q * inner);
      }
    const auto used = static_cast<Eigen::Index>(count * inner);
    block.noalias() = packed_v.leftCols(used) * packed_y.leftCols(used).transpose();
    add();
  }
}

/// grad[i][a, a'] = sum_{o, t} v_i[o, a, t] y_i[o, a', t] for each tensor i (grad: `tensors` d x d blocks).
/// `partial` holds mode_contraction_scratch doubles. `tiled` (what `automatic` means on host spaces) contracts o
/// slices by Eigen's GEMM in blocks (host spaces only); `lane_per_parameter` runs the team schedule (TeamContraction),
/// what every other space runs.
template <class ExecSpace, class T>
void mode_contraction(const ExecSpace& space, const T* v, std::ptrdiff_t v_stride, const T* y, std::ptrdiff_t y_stride,
                      std::size_t tensors, const Mode& mode, T* grad,
                      const typename WorkspaceCarver<ExecSpace>::template Array<double>& partial,
                      Schedule schedule = Schedule::automatic) {
  const std::size_t d = mode.extent, inner = mode.inner, outer = mode.outer;
  double* part = partial.data();
  std::size_t chunks = 0;
  constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);
  if constexpr (on_host) {
    if (resolve<ExecSpace>(schedule) == Schedule::tiled) {
      const ContractionChunking ch(outer);
      const std::size_t chunk = ch.chunk;
      chunks = ch.chunks;
      Kokkos::parallel_for(
          "camex::mode_contraction[chunks]", Kokkos::RangePolicy<ExecSpace>(space, 0, tensors * chunks), [=](std::size_t w) {
            const std::size_t i = w / ch.chunks, c = w % ch.chunks;
            contract_chunk_on_host(v + i * v_stride, y + i * y_stride, mode, c * chunk, chunk_end(c, chunk, outer),
                                   part + w * d * d);
          });
    }
  }
  if (chunks == 0) {
    const ContractionChunking ch(outer * inner);
    chunks = ch.chunks;
    using Team = TeamContraction<ExecSpace, T>;
    const std::size_t blocks = (d + contraction_block_rows - 1) / contraction_block_rows;
    constexpr int team_size = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible)
                                  ? 1 : Team::outputs;
    Kokkos::parallel_for("camex::mode_contraction[teams]",
                         Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>(tensors * chunks * blocks * blocks), team_size)
                             .set_scratch_size(0, Kokkos::PerTeam(Team::scratch_bytes())),
                         Team{v, v_stride, y, y_stride, d, inner, outer * inner, ch.chunk, chunks, blocks, part});
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
