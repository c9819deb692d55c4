#pragma once
// camex::gemm on Kokkos' Cuda space: one cublasGemmStridedBatchedEx on the space's stream, through the handle of
// that stream (platform/cublas_handles.hpp). The operands were checked by gemm.
//
// camex's matrices are row-major and cuBLAS's column-major. A row-major matrix read as column-major is its
// transpose, so C = op(A) op(B) is computed as Cᵀ = op(B)ᵀ op(A)ᵀ: the operands swap places, each keeps its own
// transpose flag, and m and n swap. No copy is made. as_column_major spells that out apart from cuBLAS, so tests
// check it on machines without a GPU against a column-major reference product.
//
// Precision: fp32 products compute in fp32 (CUBLAS_COMPUTE_32F) unless the process allowed TF32 tensor cores
// (camex::allow_tf32, as PyTorch's torch.backends.cuda.matmul.allow_tf32); fp64 in fp64. beta = 0 does not read C.

#include <Kokkos_Core.hpp>

#include <cstddef>

#include "camex/kernels/gemm_batch.hpp"

namespace camex::detail {

/// One batch of column-major products C_i = alpha op(A_i) op(B_i) + beta C_i as BLAS states them: op(A_i) is
/// m x k, op(B_i) k x n, element (r, c) of a matrix at r + c ld.
template <class T>
struct ColumnMajorGemm {
  bool transpose_a = false, transpose_b = false;
  int m = 0, n = 0, k = 0;
  const T* a = nullptr;
  std::ptrdiff_t lda = 0, stride_a = 0;
  const T* b = nullptr;
  std::ptrdiff_t ldb = 0, stride_b = 0;
  T* c = nullptr;
  std::ptrdiff_t ldc = 0, stride_c = 0;
};

template <class T>
ColumnMajorGemm<T> as_column_major(const GemmBatch<T>& g) {
  return {.transpose_a = g.transpose_b == Transpose::yes, .transpose_b = g.transpose_a == Transpose::yes,
          .m = g.n, .n = g.m, .k = g.k, .a = g.b, .lda = g.ldb, .stride_a = g.stride_b, .b = g.a, .ldb = g.lda,
          .stride_b = g.stride_a, .c = g.c, .ldc = g.ldc, .stride_c = g.stride_c};
}

}  // namespace camex::detail

#if defined(KOKKOS_ENABLE_CUDA)
#include <cublas_v2.h>

#include <climits>
#include <type_traits>

#include "camex/core/error.hpp"
#include "camex/platform/cublas_handles.hpp"

namespace camex::detail {

inline int cublas_int(const char* argument, std::ptrdiff_t value) {
  if (value > INT_MAX)
    throw argument_error("camex::gemm", argument, concat("at most ", INT_MAX, " (cuBLAS's int)"), concat(value));
  return static_cast<int>(value);
}

template <class T>
void gemm_cublas(const Kokkos::Cuda& space, const GemmBatch<T>& g, bool tf32) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "cuBLAS runs float and double products");
  constexpr cudaDataType_t type = std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_64F;
  const cublasComputeType_t compute = std::is_same_v<T, double> ? CUBLAS_COMPUTE_64F
                                      : tf32                    ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                : CUBLAS_COMPUTE_32F;
  const ColumnMajorGemm<T> cm = as_column_major(g);
  const auto op = [](bool transpose) { return transpose ? CUBLAS_OP_T : CUBLAS_OP_N; };
  const int lda = cublas_int("ldb", cm.lda), ldb = cublas_int("lda", cm.ldb), ldc = cublas_int("ldc", cm.ldc);
  platform::check_cublas(
      cublasGemmStridedBatchedEx(platform::cublas_handle(space), op(cm.transpose_a), op(cm.transpose_b), cm.m, cm.n,
                                 cm.k, &g.alpha, cm.a, type, lda, cm.stride_a, cm.b, type, ldb, cm.stride_b, &g.beta,
                                 cm.c, type, ldc, cm.stride_c, g.batch, compute, CUBLAS_GEMM_DEFAULT),
      "camex::gemm: cublasGemmStridedBatchedEx");
}

}  // namespace camex::detail
#endif
