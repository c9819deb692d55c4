#pragma once
// A dense affine map over tokens, y = x W^T + b with W [O, I] (PyTorch's nn.Linear layout), on camex's batched
// GEMM (camex/kernels/gemm.hpp). The backward accumulates into d_x, d_weight and d_bias; an empty d_x asks for no
// input gradient (a first layer over data).

#include <camex/core/schedule.hpp>
#include <camex/kernels/gemm.hpp>
#include <camex/kernels/row_spans.hpp>
#include <camex/platform/vectorize.hpp>

#include "tensor.hpp"

namespace camex::examples {

/// C [m, n] = alpha op(A) op(B) + beta C for whole row-major matrices.
template <class Space, class T, class A, class B>
void matmul(const Space& space, const A& a, Transpose ta, const B& b, Transpose tb,
            const Mat<T, Space>& c, T alpha, T beta) {
  const bool at = ta == Transpose::yes;
  gemm(space, GemmBatch<T>{.transpose_a = ta, .transpose_b = tb, .m = static_cast<int>(c.extent(0)),
                                           .n = static_cast<int>(c.extent(1)),
                                           .k = static_cast<int>(at ? a.extent(0) : a.extent(1)), .alpha = alpha,
                                           .a = a.data(), .lda = static_cast<std::ptrdiff_t>(a.extent(1)),
                                           .b = b.data(), .ldb = static_cast<std::ptrdiff_t>(b.extent(1)),
                                           .beta = beta, .c = c.data(), .ldc = static_cast<std::ptrdiff_t>(c.extent(1))});
}

/// Columns a host work item sums over the rows: a 64-byte cache line of floats.
inline constexpr std::size_t column_block = 16;

/// sums(o) += the sum over t of m(t, o), in double, t ascending (so the same for any thread count). The host
/// reads the rows in blocks of columns, a cache line of floats wide, and adds each row's block in SIMD registers.
template <class Space, class T>
void add_column_sums(const Space& space, const InMat<T, Space>& m, const Vec<T, Space>& sums) {
  constexpr std::size_t block = column_block;
  const std::size_t rows = m.extent(0), columns = m.extent(1);
  require_length("add_column_sums", "sums", sums, columns, "m's columns");
  if (detail::resolve<Space>(Schedule::automatic) == Schedule::tiled) {
    Kokkos::parallel_for("column_sums", Kokkos::RangePolicy<Space>(space, 0, (columns + block - 1) / block),
                         KOKKOS_LAMBDA(std::size_t w) {
                           const std::size_t first = w * block, width = columns - first < block ? columns - first : block;
                           double partial[block] = {};
                           for (std::size_t t = 0; t < rows; ++t) {
                             CAMEX_IVDEP
                             for (std::size_t j = 0; j < width; ++j) partial[j] += m(t, first + j);
                           }
                           for (std::size_t j = 0; j < width; ++j) sums(first + j) += static_cast<T>(partial[j]);
                         });
    return;
  }
  Kokkos::parallel_for("column_sums", Kokkos::RangePolicy<Space>(space, 0, columns), KOKKOS_LAMBDA(std::size_t o) {
    double sum = 0;
    for (std::size_t t = 0; t < rows; ++t) sum += m(t, o);
    sums(o) += static_cast<T>(sum);
  });
}

template <class Space, class T>
void linear_forward(const Space& space, const InMat<T, Space>& x, const InMat<T, Space>& weight,
                    const InVec<T, Space>& bias, const Mat<T, Space>& y) {
  constexpr const char* fn = "linear_forward";
  const std::size_t n = x.extent(0), out = weight.extent(0);
  require_shape(fn, "weight", weight, out, x.extent(1), "[O, I] with I = x's columns");
  require_length(fn, "bias", bias, out, "weight's rows");
  require_shape(fn, "y", y, n, out, "[N, O]");
  matmul(space, x, Transpose::no, weight, Transpose::yes, y, T(1), T(0));
  for_each_row_span(space, "linear_forward[bias]", n, out, KOKKOS_LAMBDA(std::size_t t, std::size_t begin, std::size_t end) {
    CAMEX_IVDEP
    for (std::size_t o = begin; o < end; ++o) y(t, o) += bias(o);
  });
}

template <class Space, class T>
void linear_backward(const Space& space, const InMat<T, Space>& x, const InMat<T, Space>& weight,
                     const InMat<T, Space>& d_y, const Mat<T, Space>& d_x, const Mat<T, Space>& d_weight,
                     const Vec<T, Space>& d_bias) {
  constexpr const char* fn = "linear_backward";
  const std::size_t n = x.extent(0), out = weight.extent(0);
  require_shape(fn, "d_y", d_y, n, out, "[N, O]");
  if (d_x.size() != 0) require_shape(fn, "d_x", d_x, n, x.extent(1), "the shape of x (or empty: no input gradient)");
  require_shape(fn, "d_weight", d_weight, out, x.extent(1), "the shape of weight");
  require_length(fn, "d_bias", d_bias, out, "weight's rows");
  if (d_x.size() != 0) matmul(space, d_y, Transpose::no, weight, Transpose::no, d_x, T(1), T(1));
  matmul(space, d_y, Transpose::yes, x, Transpose::no, d_weight, T(1), T(1));
  add_column_sums(space, d_y, d_bias);
}

}  // namespace camex::examples
