#pragma once
// Loop hints shared by the host kernels; empty in device code, where a lane is one iteration.

// CAMEX_IVDEP: the loop's iterations are independent (no aliasing between its arrays).
// CAMEX_VECTOR_LANES: a short fixed-trip loop whose index is the SIMD lane; without it GCC's SLP pass may
// vectorise an enclosing unrolled loop instead and pay for gathers.
// CAMEX_UNROLL_REGISTERS: a loop over a block of SIMD register values, unrolled whole so each stays a register.
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define CAMEX_IVDEP
#define CAMEX_VECTOR_LANES
#elif defined(_OPENMP)
#define CAMEX_IVDEP _Pragma("omp simd")
#define CAMEX_VECTOR_LANES _Pragma("omp simd")
#elif defined(__clang__)
#define CAMEX_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#define CAMEX_VECTOR_LANES _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define CAMEX_IVDEP _Pragma("GCC ivdep")
#define CAMEX_VECTOR_LANES _Pragma("GCC ivdep")
#else
#define CAMEX_IVDEP
#define CAMEX_VECTOR_LANES
#endif

// nvcc's front end knows neither GCC's nor Clang's spelling (and host code of a CUDA build is where GCC's full
// unrolling of these short constant loops at -O3 has to do).
#if defined(__CUDACC__) || defined(__HIP_DEVICE_COMPILE__)
#define CAMEX_UNROLL_REGISTERS
#elif defined(__clang__)
#define CAMEX_UNROLL_REGISTERS _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define CAMEX_UNROLL_REGISTERS _Pragma("GCC unroll 32")
#else
#define CAMEX_UNROLL_REGISTERS
#endif

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace camex::detail {

/// True while a device compiler pass builds device code, false on the host: a kernel sizes its per-lane scratch
/// arrays by it, a device lane holding a few entries where a host thread holds a run of hundreds.
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
inline constexpr bool device_pass = true;
#else
inline constexpr bool device_pass = false;
#endif

/// `keep ? v : 0` as a bit mask on the host: under GCC's default -ftrapping-math a select of a computed (or
/// loaded) floating-point value is not if-converted, and the loop around it is not vectorised. The mask has T's
/// width, so a loop over T stays in T's lanes.
template <class T>
KOKKOS_FORCEINLINE_FUNCTION T value_or_zero(bool keep, T v) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return keep ? v : T(0);
#else
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "a float or a double");
  using Bits = std::conditional_t<sizeof(T) == 8, std::uint64_t, std::uint32_t>;
  Bits bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= -static_cast<Bits>(keep);
  std::memcpy(&v, &bits, sizeof v);
  return v;
#endif
}

/// a * b + c, rounded once where the target has a fused multiply-add and twice where it has not. Written out
/// rather than left to the compiler's contraction of `c + a * b`, which GCC applies or not depending on the loop
/// nest around it (a register block and a row loop over the same sum came out a rounding apart at -O3), so every
/// schedule of one sum gives the same bits.
template <class T>
KOKKOS_FORCEINLINE_FUNCTION T multiply_add(T a, T b, T c) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  if constexpr (sizeof(T) == 4)
    return fmaf(a, b, c);
  else
    return ::fma(a, b, c);
#elif defined(__FMA__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

/// Asks for the cache line at `address` ahead of a read (host GCC and Clang; nothing elsewhere). For kernels whose
/// loop touches many rows in short runs, where the hardware prefetcher restarts on every run.
KOKKOS_FORCEINLINE_FUNCTION void prefetch_for_read([[maybe_unused]] const void* address) {
#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_prefetch(address, 0, 0);
#endif
}

/// Asks for the cache line at `address` to be brought into L2 (not L1) ahead of a read, for data a kernel reads
/// after the tile it is working on: L1 keeps that tile (host GCC and Clang; nothing elsewhere).
KOKKOS_FORCEINLINE_FUNCTION void prefetch_into_l2([[maybe_unused]] const void* address) {
#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_prefetch(address, 0, 2);
#endif
}

}  // namespace camex::detail
