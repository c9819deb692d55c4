#pragma once
// Batched dense matrix products for the merged layers: C_i = alpha op(A_i) op(B_i) + beta C_i, row-major, for a
// batch of equally shaped problems at fixed strides (one per routing group: its tokens times its merged weight).
//
// Host spaces run Eigen's GEMM compiled for the CPU (the native SGEMM ceiling of the benchmarks; docs/performance.md
// puts it beside the system BLAS). The batch and the rows and columns of C are cut into fixed blocks that depend on the shape only, one
// Kokkos work item each, and Eigen runs single-threaded inside a work item: the space's threads do the
// parallelism, and the result does not depend on the thread count. Row blocks matter for the narrow products of
// small models (a [1024, 128] output is one column block, but four row blocks). Other spaces run a plain one-entry-per-lane kernel: correct on
// every backend, not tuned (a vendor BLAS belongs there); tests run it on the host too (Schedule::lane_per_parameter).

#include <Kokkos_Core.hpp>

#include <Eigen/Core>

#include <cstddef>

#include "camex/kernels/row_combination.hpp"

namespace camex {

enum class Transpose { no, yes };

/// One batch of products: op(A_i) is m x k, op(B_i) is k x n, C_i is m x n, each row-major with leading
/// dimension ld (elements between rows as stored, before the transpose) and the batch items `stride` apart.
template <class T>
struct GemmBatch {
  Transpose transpose_a = Transpose::no, transpose_b = Transpose::no;
  int m = 0, n = 0, k = 0;
  T alpha = 1;
  const T* a = nullptr;
  std::ptrdiff_t lda = 0, stride_a = 0;
  const T* b = nullptr;
  std::ptrdiff_t ldb = 0, stride_b = 0;
  T beta = 0;  ///< 0: C is only written (its old contents, even NaN, do not matter)
  T* c = nullptr;
  std::ptrdiff_t ldc = 0, stride_c = 0;
  int batch = 1;
};

namespace detail {

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

}  // namespace detail

/// Runs the batch on `space`: Eigen in column blocks on host spaces (Schedule::tiled), one lane per entry of C
/// elsewhere (Schedule::lane_per_parameter); `automatic` picks by the space.
template <class ExecSpace, class T>
void gemm(const ExecSpace& space, const GemmBatch<T>& g, Schedule schedule = Schedule::automatic) {
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);
  if constexpr (on_host) {
    if (detail::resolve<ExecSpace>(schedule) == Schedule::tiled) {
      const int column_blocks = (g.n + detail::gemm_column_block - 1) / detail::gemm_column_block;
      const int row_blocks = (g.m + detail::gemm_row_block - 1) / detail::gemm_row_block, blocks = row_blocks * column_blocks;
      Kokkos::parallel_for("camex::gemm[host]", Kokkos::RangePolicy<ExecSpace>(space, 0, g.batch * blocks), [=](int w) {
        const int item = w / blocks, row0 = w % blocks / column_blocks * detail::gemm_row_block,
                  column0 = w % column_blocks * detail::gemm_column_block;
        detail::gemm_block_on_host(g, item, row0, g.m - row0 < detail::gemm_row_block ? g.m - row0 : detail::gemm_row_block, column0,
                           g.n - column0 < detail::gemm_column_block ? g.n - column0 : detail::gemm_column_block);
      });
      return;
    }
  }
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

}  // namespace camex
