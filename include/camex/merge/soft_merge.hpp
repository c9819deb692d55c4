#pragma once
// Soft merge: merged[b, :] = sum_n scores[b, n] * experts[n, :], and its backward
//   d_scores = d_merged * experts^T        ([B, N])
//   d_experts = scores^T * d_merged        ([N, P])
// This is SMEAR's Euclidean merge, and the inner step of every other policy (they merge transformed deltas).
//
// Cost per call (P parameters, N experts, B groups, fp32): forward 2BNP flops over 4(N+B)P bytes; backward 4BNP
// flops over 4(2N+B)P bytes. Both are bandwidth-bound for the N and B camex sees (intensity <= N/4 flop/byte).

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <type_traits>

#include "camex/core/error.hpp"
#include "camex/core/views.hpp"
#include "camex/core/workspace.hpp"
#include "camex/platform/kokkos_compat.hpp"
#include "camex/kernels/gemm.hpp"
#include "camex/kernels/non_finite.hpp"
#include "camex/kernels/row_combination.hpp"

namespace camex {

namespace detail {

struct MergeExtents {
  std::size_t groups, experts, params;
};

/// The checks shared by forward and backward: non-empty operands, matching extents, finite scores.
template <class Scores, class Experts>
MergeExtents check_merge_inputs(const char* function, const Scores& scores, const Experts& experts) {
  require_nonempty(function, "experts", experts, "[N, P] stack of expert tensors");
  require_nonempty(function, "scores", scores, "[B, N] matrix of routing scores");
  const MergeExtents e{scores.extent(0), experts.extent(0), experts.extent(1)};
  require_shape(function, "scores", scores, e.groups, e.experts, "[B, N] with N = experts.extent(0)");
  // Scores are B*N numbers: checking them on the host costs nothing next to the merge, and a NaN score would
  // otherwise poison every merged parameter without a trace.
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, scores);
  for (std::size_t b = 0; b < e.groups; ++b)
    for (std::size_t n = 0; n < e.experts; ++n)
      if (!math::isfinite(host(b, n)))
        throw argument_error(function, "scores", "finite routing scores",
                             concat("scores(", b, ", ", n, ") = ", host(b, n)));
  return e;
}

/// The parameter axis of a backward is cut into chunks whose length depends only on P (at least 64 chunks when P
/// allows), so per-chunk partial sums, added in chunk order, give the same d_scores for any thread count.
template <class T>
struct BackwardChunking {
  int tile;
  std::size_t chunk;
  std::size_t chunks;
  BackwardChunking(std::size_t params, std::size_t groups, std::size_t experts)
      : tile(tile_length<T>(static_cast<int>(groups + experts), l2_tile_budget)) {
    const std::size_t tiles = (params + tile - 1) / tile;
    const std::size_t tiles_per_chunk = std::max<std::size_t>(1, tiles / 64);
    chunk = tiles_per_chunk * tile;
    chunks = (params + chunk - 1) / chunk;
  }
};

/// The operands of the tiled backward, walked one chunk per work item: each tile of d_merged and experts is read
/// from memory once and used for both d_experts and the d_scores partials while it sits in cache.
template <class T>
struct SoftMergeBackwardChunks {
  Coefficients<T> scores_t;  // C[n, b] = scores[b, n]
  const T* experts;
  std::ptrdiff_t experts_stride;
  const T* d_merged;
  std::ptrdiff_t d_merged_stride;
  T* d_experts;
  std::ptrdiff_t d_experts_stride;
  double* partial;  // [chunks, B, N]
  int groups, n_experts;
  std::size_t params, chunk;
  int tile;

  /// Zeroes chunk c's d_scores partials and returns them.
  KOKKOS_INLINE_FUNCTION double* start_chunk(std::size_t c) const {
    double* mine = partial + c * groups * n_experts;
    for (int i = 0; i < groups * n_experts; ++i) mine[i] = 0;
    return mine;
  }

  KOKKOS_INLINE_FUNCTION void add_dots(std::size_t p0, int len, double* mine, TilePrefetch<T>* ahead = nullptr) const {
    tile_dots(groups, d_merged + p0, d_merged_stride, n_experts, experts + p0, experts_stride, len, mine, ahead);
  }
};

/// The tiled backward on any space: d_experts one output row at a time.
template <class T>
struct TiledSoftMergeBackward {
  SoftMergeBackwardChunks<T> op;

  KOKKOS_INLINE_FUNCTION void operator()(std::size_t c) const {
    double* mine = op.start_chunk(c);
    const std::size_t end = chunk_end(c, op.chunk, op.params);
    for (std::size_t p0 = c * op.chunk; p0 < end; p0 += op.tile) {
      const int len = tile_extent(p0, end, op.tile);
      for (int n = 0; n < op.n_experts; ++n)
        combine_rows(op.groups, op.d_merged + p0, op.d_merged_stride, op.scores_t, n,
                     op.d_experts + n * op.d_experts_stride + p0, len);
      op.add_dots(p0, len, mine);
    }
  }
};

/// The tiled backward on host spaces: d_experts in register blocks of output rows (each loaded d_merged vector
/// feeds several experts), written past the caches when it cannot stay in them.
template <class T>
struct HostTiledSoftMergeBackward {
  SoftMergeBackwardChunks<T> op;
  bool streaming;

  void operator()(std::size_t c) const {
    double* mine = op.start_chunk(c);
    const std::size_t end = chunk_end(c, op.chunk, op.params);
    for (std::size_t p0 = c * op.chunk; p0 < end; p0 += op.tile) {
      const int len = tile_extent(p0, end, op.tile);
      // The dot products first: they read both tiles from memory, and d_experts then finds d_merged in cache
      // (1.5-7 % faster at B = 16 than the other order, docs/performance.md).
      // Both passes ask for the next tile as they go (the dot products a line per step, d_experts the rest
      // spread evenly): this thread's next tile, or at the end of its range the first of a neighbour's (Kokkos
      // gives each thread consecutive chunks).
      TilePrefetch<T> ahead;
      if (const std::size_t next = p0 + op.tile; next < op.params)
        ahead = TilePrefetch<T>({op.experts + next, op.experts_stride, op.n_experts},
                                {op.d_merged + next, op.d_merged_stride, op.groups}, tile_extent(next, op.params, op.tile));
      op.add_dots(p0, len, mine, &ahead);
      combine_tile_on_host<T>(streaming, op.n_experts, op.groups, op.d_merged + p0, op.d_merged_stride, op.scores_t,
                           op.d_experts + p0, op.d_experts_stride, len, nullptr, &ahead);
    }
    if (streaming) streaming_fence();
  }
};

}  // namespace detail

namespace detail {

/// Entries of the parameter axis one product of the lane schedule's d_scores batch sums in the scalar type: the
/// longest host tile, so both schedules' rounding bounds are those of a 4096-term sum.
inline constexpr std::size_t d_scores_piece = max_tile_length;

/// The backward's workspace, for the size query and the carve alike: the tiled schedule's per-chunk d_scores
/// partial sums (double), and the lane schedule's per-piece partial products (the batch of GEMMs' outputs).
template <class T, class ExecSpace>
struct SoftMergeBackwardPieces {
  typename WorkspaceCarver<ExecSpace>::template Array<double> chunk_sums;  // [chunks, B, N]
  typename WorkspaceCarver<ExecSpace>::template Array<T> piece_sums;       // [pieces, B, N]

  SoftMergeBackwardPieces(WorkspaceCarver<ExecSpace>& carver, std::size_t groups, std::size_t experts, std::size_t params)
      : chunk_sums(carver.template take<double>(BackwardChunking<T>(params, groups, experts).chunks * groups * experts)),
        piece_sums(carver.template take<T>((params + d_scores_piece - 1) / d_scores_piece * groups * experts)) {}
};

}  // namespace detail

/// Bytes of workspace soft_merge_backward needs for B groups, N experts and P parameters of type Scalar.
template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
std::size_t soft_merge_backward_workspace_bytes(std::size_t groups, std::size_t experts, std::size_t params) {
  WorkspaceCarver<ExecSpace> carver;
  detail::SoftMergeBackwardPieces<Scalar, ExecSpace>(carver, groups, experts, params);
  return carver.bytes();
}

namespace detail {

/// The launch of soft_merge, for callers that have checked the operands (a policy checks its scores as it builds
/// them on the execution space); an armed `scan` checks the experts as the merge reads them.
template <class ExecSpace, class ScoresView, class ExpertsView, class MergedView>
void launch_soft_merge(const ExecSpace& space, const ScoresView& scores, const ExpertsView& experts,
                       const MergedView& merged, NonFiniteScan scan = {}, Schedule schedule = Schedule::automatic) {
  using T = typename MergedView::value_type;
  detail::row_combination(space, schedule,
                          detail::RowCombination<T>{.coef = {scores.data(), row_stride(scores), 1},
                                                    .rows = experts.data(),
                                                    .row_stride = row_stride(experts),
                                                    .in_rows = static_cast<int>(experts.extent(0)),
                                                    .out = merged.data(),
                                                    .out_stride = row_stride(merged),
                                                    .out_rows = static_cast<int>(scores.extent(0)),
                                                    .length = experts.extent(1),
                                                    .scan = scan});
}

}  // namespace detail

/// merged[b, :] = sum_n scores[b, n] * experts[n, :]. `merged` is overwritten.
/// Throws camex::argument_error for empty operands, mismatched shapes, non-finite scores, or `merged` overlapping
/// an input. The scores are checked on the host (a copy on a device): a policy's merge checks them on the
/// execution space instead.
template <class ExecSpace, MatrixOn<ExecSpace> ScoresView, MatrixOn<ExecSpace> ExpertsView,
          MatrixOn<ExecSpace> MergedView>
  requires MutableMatrix<MergedView> &&
           std::same_as<typename ScoresView::non_const_value_type, typename MergedView::value_type> &&
           std::same_as<typename ExpertsView::non_const_value_type, typename MergedView::value_type> &&
           std::floating_point<typename MergedView::value_type>
void soft_merge(const ExecSpace& space, const ScoresView& scores, const ExpertsView& experts,
                const MergedView& merged, Schedule schedule = Schedule::automatic) {
  constexpr const char* fn = "camex::soft_merge";
  const auto e = detail::check_merge_inputs(fn, scores, experts);
  require_shape(fn, "merged", merged, e.groups, e.params, "[B, P] with B = scores.extent(0), P = experts.extent(1)");
  require_disjoint(fn, "merged", merged, "experts", experts);
  require_disjoint(fn, "merged", merged, "scores", scores);
  detail::launch_soft_merge(space, scores, experts, merged, {}, schedule);
}

namespace detail {

/// d_scores(b, n) = sum over c < count of part[c, b, n], added in order in double.
template <class ExecSpace, class Partial, class DScoresView>
void add_partial_sums(const ExecSpace& space, const char* label, const Partial* part, std::size_t count,
                      const DScoresView& d_scores) {
  using T = typename DScoresView::value_type;
  const std::size_t groups = d_scores.extent(0), experts = d_scores.extent(1);
  Kokkos::parallel_for(label, Kokkos::RangePolicy<ExecSpace>(space, 0, groups * experts), KOKKOS_LAMBDA(std::size_t i) {
    double acc = 0;
    for (std::size_t c = 0; c < count; ++c) acc += static_cast<double>(part[c * groups * experts + i]);
    d_scores(i / experts, i % experts) = static_cast<T>(acc);
  });
}

/// The launch of soft_merge_backward, for callers that have checked the operands.
template <class ExecSpace, class ScoresView, class ExpertsView, class DMergedView, class DScoresView, class DExpertsView>
void launch_soft_merge_backward(const ExecSpace& space, const ScoresView& scores, const ExpertsView& experts,
                                const DMergedView& d_merged, const DScoresView& d_scores, const DExpertsView& d_experts,
                                const Workspace<ExecSpace>& workspace, Schedule schedule = Schedule::automatic) {
  using T = typename DExpertsView::value_type;
  constexpr const char* fn = "camex::soft_merge_backward";
  const MergeExtents e{scores.extent(0), experts.extent(0), experts.extent(1)};
  const BackwardChunking<T> chunking(e.params, e.groups, e.experts);
  WorkspaceCarver<ExecSpace> carver(fn, workspace);
  const SoftMergeBackwardPieces<T, ExecSpace> pieces(carver, e.groups, e.experts, e.params);
  const Coefficients<T> scores_t{scores.data(), 1, row_stride(scores)};
  const int groups = static_cast<int>(e.groups), n_experts = static_cast<int>(e.experts);
  if (resolve<ExecSpace>(schedule) == Schedule::tiled) {
    const SoftMergeBackwardChunks<T> op{scores_t, experts.data(), row_stride(experts), d_merged.data(),
                                        row_stride(d_merged), d_experts.data(), row_stride(d_experts),
                                        pieces.chunk_sums.data(), groups, n_experts, e.params, chunking.chunk, chunking.tile};
    const auto policy = Kokkos::RangePolicy<ExecSpace>(space, 0, chunking.chunks);
    if constexpr (static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible))
      Kokkos::parallel_for("camex::soft_merge_backward[tiled]", policy,
                           HostTiledSoftMergeBackward<T>{op, prefer_streaming_stores(sizeof(T) * e.experts * e.params)});
    else
      Kokkos::parallel_for("camex::soft_merge_backward[tiled]", policy, TiledSoftMergeBackward<T>{op});
    add_partial_sums(space, "camex::soft_merge_backward[sum chunks]", pieces.chunk_sums.data(), chunking.chunks, d_scores);
    return;
  }
  row_combination(space, schedule,
                  RowCombination<T>{.coef = scores_t,
                                    .rows = d_merged.data(),
                                    .row_stride = row_stride(d_merged),
                                    .in_rows = groups,
                                    .out = d_experts.data(),
                                    .out_stride = row_stride(d_experts),
                                    .out_rows = n_experts,
                                    .length = e.params});
  // d_scores' partial products over pieces of d_scores_piece parameters: partial[c] = d_merged[:, piece c]
  // experts[:, piece c]^T, a strided batch over the whole pieces and one product for the short last piece (cuBLAS on
  // Cuda, Eigen's GEMM on host spaces: camex::gemm). No product sums more than one piece, whatever the backend.
  const std::size_t whole = e.params / d_scores_piece, rest = e.params % d_scores_piece;
  const auto piece = static_cast<std::ptrdiff_t>(d_scores_piece);
  const auto product = [&](std::size_t first, int k, int batch) {
    gemm(space, GemmBatch<T>{.transpose_a = Transpose::no, .transpose_b = Transpose::yes, .m = groups, .n = n_experts,
                             .k = k, .alpha = 1, .a = d_merged.data() + first * d_scores_piece, .lda = row_stride(d_merged),
                             .stride_a = piece, .b = experts.data() + first * d_scores_piece, .ldb = row_stride(experts),
                             .stride_b = piece, .beta = 0, .c = pieces.piece_sums.data() + first * e.groups * e.experts,
                             .ldc = n_experts, .stride_c = groups * n_experts, .batch = batch});
  };
  if (whole > 0) product(0, static_cast<int>(d_scores_piece), static_cast<int>(whole));
  if (rest > 0) product(whole, static_cast<int>(rest), 1);
  add_partial_sums(space, "camex::soft_merge_backward[sum pieces]", pieces.piece_sums.data(), whole + (rest > 0 ? 1 : 0), d_scores);
}

}  // namespace detail

/// Backward of soft_merge: d_scores = d_merged * experts^T, d_experts = scores^T * d_merged (both overwritten).
/// `workspace` holds at least soft_merge_backward_workspace_bytes<Scalar>(B, N, P) bytes. The result is the same
/// for any thread count: partial sums are taken over fixed chunks of the parameter axis and added in order.
template <class ExecSpace, MatrixOn<ExecSpace> ScoresView, MatrixOn<ExecSpace> ExpertsView,
          MatrixOn<ExecSpace> DMergedView, MatrixOn<ExecSpace> DScoresView, MatrixOn<ExecSpace> DExpertsView>
  requires MutableMatrix<DScoresView> && MutableMatrix<DExpertsView> &&
           std::same_as<typename ScoresView::non_const_value_type, typename DExpertsView::value_type> &&
           std::same_as<typename ExpertsView::non_const_value_type, typename DExpertsView::value_type> &&
           std::same_as<typename DMergedView::non_const_value_type, typename DExpertsView::value_type> &&
           std::same_as<typename DScoresView::value_type, typename DExpertsView::value_type> &&
           std::floating_point<typename DExpertsView::value_type>
void soft_merge_backward(const ExecSpace& space, const ScoresView& scores, const ExpertsView& experts,
                         const DMergedView& d_merged, const DScoresView& d_scores, const DExpertsView& d_experts,
                         const Workspace<ExecSpace>& workspace, Schedule schedule = Schedule::automatic) {
  constexpr const char* fn = "camex::soft_merge_backward";
  const auto e = detail::check_merge_inputs(fn, scores, experts);
  require_shape(fn, "d_merged", d_merged, e.groups, e.params, "[B, P] with B = scores.extent(0), P = experts.extent(1)");
  require_shape(fn, "d_scores", d_scores, e.groups, e.experts, "[B, N], the shape of scores");
  require_shape(fn, "d_experts", d_experts, e.experts, e.params, "[N, P], the shape of experts");
  require_disjoint(fn, "d_experts", d_experts, "d_merged", d_merged);
  require_disjoint(fn, "d_experts", d_experts, "experts", experts);
  require_disjoint(fn, "d_experts", d_experts, "scores", scores);
  require_disjoint(fn, "d_scores", d_scores, "d_merged", d_merged);
  require_disjoint(fn, "d_scores", d_scores, "experts", experts);
  require_disjoint(fn, "d_scores", d_scores, "scores", scores);

  detail::launch_soft_merge_backward(space, scores, experts, d_merged, d_scores, d_experts, workspace, schedule);
}

/// soft_merge_backward with a workspace allocated for this call (for use outside hot loops).
template <class ExecSpace, MatrixOn<ExecSpace> ScoresView, MatrixOn<ExecSpace> ExpertsView,
          MatrixOn<ExecSpace> DMergedView, MatrixOn<ExecSpace> DScoresView, MatrixOn<ExecSpace> DExpertsView>
void soft_merge_backward(const ExecSpace& space, const ScoresView& scores, const ExpertsView& experts,
                         const DMergedView& d_merged, const DScoresView& d_scores, const DExpertsView& d_experts,
                         Schedule schedule = Schedule::automatic) {
  using T = typename DExpertsView::non_const_value_type;
  const auto workspace = make_workspace<ExecSpace>(
      soft_merge_backward_workspace_bytes<T, ExecSpace>(scores.extent(0), experts.extent(0), experts.extent(1)),
      "camex::soft_merge_backward::workspace");
  soft_merge_backward(space, scores, experts, d_merged, d_scores, d_experts, workspace, schedule);
}

}  // namespace camex
