#pragma once
// The launchers behind camex::gemm (kernels/gemm.hpp) that run on any Kokkos space: Eigen in blocks of C on host
// spaces, one lane per entry of C elsewhere. The operands were checked by gemm.
//
// Host blocks: the batch and the rows and columns of C are cut into fixed blocks that depend on the shape only, one
// Kokkos work item each, and Eigen runs single-threaded inside a work item: the space's threads do the
// parallelism, and the result depends neither on the thread count nor on which thread takes a block. Row blocks
// matter for the narrow products of small models (a [1024, 128] output is one column block, but four row blocks).
// The blocks are handed out one at a time as threads come free, so a thread that shares its core with another
// process takes fewer of them (docs/reliability.md, "Fair under load").

#include <Kokkos_Core.hpp>

#include <Eigen/Core>

#include <cstddef>

#include "camex/kernels/gemm_batch.hpp"

namespace camex::detail {

/// Columns and rows of C one host work item computes.
inline constexpr int gemm_column_block = 256;
inline constexpr int gemm_row_block = 256;

template <class T>
inline void gemm_block_on_host(const GemmBatch<T>& g, int item, int row0, int rows, int column0, int columns) {
  using Stride = Eigen::OuterStride<>;
  using Rows = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ConstMap = Eigen::Map<const Rows, 0, Stride>;
  const bool ta = g.transpose_a == Transpose::yes, tb = g.transpose_b == Transpose::yes;
  // The block's rows of op(A): columns row0.. of A when transposed, rows row0.. otherwise.
  const ConstMap a(g.a + item * g.stride_a + (ta ? row0 : row0 * g.lda), ta ? g.k : rows, ta ? rows : g.k,
                   Stride(g.lda));
  // The block's columns of op(B): rows column0.. of B when transposed, columns column0.. otherwise.
  const ConstMap b(g.b + item * g.stride_b + (tb ? column0 * g.ldb : column0), tb ? columns : g.k, tb ? g.k : columns,
                   Stride(g.ldb));
  Eigen::Map<Rows, 0, Stride> c(g.c + item * g.stride_c + row0 * g.ldc + column0, rows, columns, Stride(g.ldc));
  const auto product = [&](const auto& left, const auto& right) {
    if (g.beta == T(0))
      c.noalias() = g.alpha * (left * right);
    else {
      c *= g.beta;
      c.noalias() += g.alpha * (left * right);
    }
  };
  if (ta && tb)
    product(a.transpose(), b.transpose());
  else if (ta)
    product(a.transpose(), b);
  else if (tb)
    product(a, b.transpose());
  else
    product(a, b);
}

template <class ExecSpace, class T>
void gemm_host_blocks(const ExecSpace& space, const GemmBatch<T>& g) {
  const int column_blocks = (g.n + gemm_column_block - 1) / gemm_column_block;
  const int row_blocks = (g.m + gemm_row_block - 1) / gemm_row_block, blocks = row_blocks * column_blocks;
  Kokkos::parallel_for("camex::gemm[host]",
                       Kokkos::RangePolicy<ExecSpace, Kokkos::Schedule<Kokkos::Dynamic>>(space, 0, g.batch * blocks).set_chunk_size(1),
                       [=](int w) {
    const int item = w / blocks, row0 = w % blocks / column_blocks * gemm_row_block,
              column0 = w % column_blocks * gemm_column_block;
    gemm_block_on_host(g, item, row0, g.m - row0 < gemm_row_block ? g.m - row0 : gemm_row_block, column0,
                       g.n - column0 < gemm_column_block ? g.n - column0 : gemm_column_block);
  });
}

/// Correct on every backend and untuned: the reference the tuned paths are tested beside.
template <class ExecSpace, class T>
void gemm_lanes(const ExecSpace& space, const GemmBatch<T>& g) {
  const std::size_t per = static_cast<std::size_t>(g.m) * g.n;
  Kokkos::parallel_for("camex::gemm[lanes]", Kokkos::RangePolicy<ExecSpace>(space, 0, per * g.batch),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t item = w / per, r = w % per / g.n, col = w % g.n;
                         const T* a = g.a + item * g.stride_a;
                         const T* b = g.b + item * g.stride_b;
                         T sum = 0;
                         for (int q = 0; q < g.k; ++q) {
                           const T x = g.transpose_a == Transpose::yes ? a[q * g.lda + r] : a[r * g.lda + q];
                           const T y = g.transpose_b == Transpose::yes ? b[col * g.ldb + q] : b[q * g.ldb + col];
                           sum += x * y;
                         }
                         T& out = g.c[item * g.stride_c + r * g.ldc + col];
                         out = g.beta == T(0) ? g.alpha * sum : g.alpha * sum + g.beta * out;
                       });
}

}  // namespace camex::detail
