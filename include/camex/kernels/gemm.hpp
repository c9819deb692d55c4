#pragma once
// Batched dense matrix products for the merged layers and the trainers: C_i = alpha op(A_i) op(B_i) + beta C_i,
// row-major, for a batch of equally shaped problems at fixed strides (one per routing group: its tokens times its
// merged weight; one per attention head).
//
// gemm checks the batch and forwards it to the space's tuned path (Schedule::tiled, what `automatic` means here on
// every space): Eigen's GEMM compiled for the CPU, in blocks of C, on host spaces (kernels/detail/gemm_impl.hpp;
// docs/performance.md puts its rate beside the system BLAS), cuBLAS on Kokkos' Cuda space
// (kernels/detail/gemm_cublas.hpp). Schedule::lane_per_parameter asks for the plain one-entry-per-lane kernel
// instead, on any space: the reference tests put beside the tuned paths, and the path of backends with no vendor
// BLAS wired in (HIP, SYCL).

#include <Kokkos_Core.hpp>

#include <atomic>
#include <cstddef>
#include <type_traits>

#include "camex/core/error.hpp"
#include "camex/core/schedule.hpp"
#include "camex/kernels/detail/gemm_cublas.hpp"
#include "camex/kernels/detail/gemm_impl.hpp"
#include "camex/kernels/gemm_batch.hpp"

namespace camex {

namespace detail {
inline std::atomic<bool> tf32_allowed{false};
}

/// Lets fp32 products on CUDA use TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation), for the whole
/// process, as PyTorch's torch.backends.cuda.matmul.allow_tf32; off by default, so fp32 products are fp32. Host
/// spaces compute in fp32 either way.
inline void allow_tf32(bool allowed) { detail::tf32_allowed.store(allowed, std::memory_order_relaxed); }
inline bool tf32_allowed() { return detail::tf32_allowed.load(std::memory_order_relaxed); }

namespace detail {

inline void require_gemm_operand(const char* argument, const void* data, std::ptrdiff_t ld, std::ptrdiff_t columns,
                                 const char* columns_are) {
  if (data == nullptr) throw argument_error("camex::gemm", argument, "a matrix", "a null pointer");
  if (ld < columns || ld < 1)
    throw argument_error("camex::gemm", concat("ld", argument),
                         concat("at least ", columns < 1 ? 1 : columns, " (", columns_are, ", as stored)"), concat(ld));
}

inline void require_gemm_count(const char* argument, int value) {
  if (value < 0) throw argument_error("camex::gemm", argument, "a count of at least 0", concat(value));
}

template <class T>
void require_gemm_batch(const GemmBatch<T>& g) {
  require_gemm_count("m", g.m);
  require_gemm_count("n", g.n);
  require_gemm_count("k", g.k);
  require_gemm_count("batch", g.batch);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  require_gemm_operand("c", g.c, g.ldc, g.n, "n");
  if (g.k == 0) return;
  const bool ta = g.transpose_a == Transpose::yes, tb = g.transpose_b == Transpose::yes;
  require_gemm_operand("a", g.a, g.lda, ta ? g.m : g.k, ta ? "m, A being transposed" : "k");
  require_gemm_operand("b", g.b, g.ldb, tb ? g.k : g.n, tb ? "k, B being transposed" : "n");
}

}  // namespace detail

/// Runs the batch on `space`. Throws argument_error for a negative count, a null operand that is read or written,
/// or a leading dimension shorter than its stored row.
template <class ExecSpace, class T>
void gemm(const ExecSpace& space, const GemmBatch<T>& g, Schedule schedule = Schedule::automatic) {
  detail::require_gemm_batch(g);
  if (g.m == 0 || g.n == 0 || g.batch == 0) return;
  const bool tuned = schedule != Schedule::lane_per_parameter && g.k > 0;
  constexpr bool on_host = static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, Kokkos::HostSpace>::accessible);
  if constexpr (on_host) {
    if (tuned) return detail::gemm_host_blocks(space, g);
  }
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    if (tuned) return detail::gemm_cublas(space, g, tf32_allowed());
  }
#endif
  detail::gemm_lanes(space, g);
}

}  // namespace camex
