#pragma once
// The description of one batch of dense products that camex::gemm (kernels/gemm.hpp) runs.

#include <cstddef>

namespace camex {

enum class Transpose { no, yes };

/// One batch of products C_i = alpha op(A_i) op(B_i) + beta C_i: op(A_i) is m x k, op(B_i) is k x n, C_i is m x n,
/// each row-major with leading dimension ld (elements between rows as stored, before the transpose) and the batch
/// items `stride` apart (0: every item reads the same operand).
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

}  // namespace camex
