#pragma once
// One SIMD register of T as a value, for host kernels that keep a block of accumulators in registers. Written with
// the target's intrinsics because GCC keeps a `T acc[rows][columns]` array on the stack as soon as anything takes
// an element's address (a non-temporal store does) or initialises it as a whole (a memset): every block then
// writes and re-reads its accumulators through L1, which costs more than its multiply-adds.
//
// Present where the target has AVX-512, or AVX2 with FMA; SimdRegister<T>::lanes is 0 elsewhere (device passes
// included), and callers keep a plain loop for that case. multiply_add is the fused one, as the scalar
// multiply_add of vectorize.hpp is on these targets, so a sum gives the same bits in either form.
//
// keep_in_register hides a loaded value from the optimiser (an empty asm that may change it), so the compiler
// cannot fold its load into each instruction that uses it: GCC otherwise reloads a vector from memory for every
// multiply-add it feeds, and a register block of dot products spends its time on loads (half the multiply-add
// rate of the same block with its operands held, measured in cache on the machines of docs/performance.md).

#include <cstddef>

#if !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__) && \
    (defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__)))
#include <immintrin.h>
#if defined(__AVX512F__)
#define CAMEX_SIMD_REGISTER_BYTES 64
#else
#define CAMEX_SIMD_REGISTER_BYTES 32
#endif
#else
#define CAMEX_SIMD_REGISTER_BYTES 0
#endif

namespace camex::detail {

/// No SIMD register for T on this target.
template <class T>
struct SimdRegister {
  static constexpr int lanes = 0;
};

#if CAMEX_SIMD_REGISTER_BYTES == 64
template <>
struct SimdRegister<float> {
  using type = __m512;
  static constexpr int lanes = 16;
  [[gnu::always_inline]] static type zero() { return _mm512_setzero_ps(); }
  [[gnu::always_inline]] static type broadcast(float a) { return _mm512_set1_ps(a); }
  [[gnu::always_inline]] static type load(const float* p) { return _mm512_loadu_ps(p); }
  [[gnu::always_inline]] static type add(type a, type b) { return _mm512_add_ps(a, b); }
  [[gnu::always_inline]] static type subtract(type a, type b) { return _mm512_sub_ps(a, b); }
  [[gnu::always_inline]] static type multiply_add(type a, type b, type c) { return _mm512_fmadd_ps(a, b, c); }
  [[gnu::always_inline]] static void keep_in_register(type& v) { asm("" : "+v"(v)); }
  [[gnu::always_inline]] static void store(float* p, type v) { _mm512_storeu_ps(p, v); }
  /// p on a 64-byte boundary.
  [[gnu::always_inline]] static void store_streaming(float* p, type v) { _mm512_stream_ps(p, v); }
};

template <>
struct SimdRegister<double> {
  using type = __m512d;
  static constexpr int lanes = 8;
  [[gnu::always_inline]] static type zero() { return _mm512_setzero_pd(); }
  [[gnu::always_inline]] static type broadcast(double a) { return _mm512_set1_pd(a); }
  [[gnu::always_inline]] static type load(const double* p) { return _mm512_loadu_pd(p); }
  [[gnu::always_inline]] static type add(type a, type b) { return _mm512_add_pd(a, b); }
  [[gnu::always_inline]] static type subtract(type a, type b) { return _mm512_sub_pd(a, b); }
  [[gnu::always_inline]] static type multiply_add(type a, type b, type c) { return _mm512_fmadd_pd(a, b, c); }
  [[gnu::always_inline]] static void keep_in_register(type& v) { asm("" : "+v"(v)); }
  [[gnu::always_inline]] static void store(double* p, type v) { _mm512_storeu_pd(p, v); }
  [[gnu::always_inline]] static void store_streaming(double* p, type v) { _mm512_stream_pd(p, v); }
};
#elif CAMEX_SIMD_REGISTER_BYTES == 32
template <>
struct SimdRegister<float> {
  using type = __m256;
  static constexpr int lanes = 8;
  [[gnu::always_inline]] static type zero() { return _mm256_setzero_ps(); }
  [[gnu::always_inline]] static type broadcast(float a) { return _mm256_set1_ps(a); }
  [[gnu::always_inline]] static type load(const float* p) { return _mm256_loadu_ps(p); }
  [[gnu::always_inline]] static type add(type a, type b) { return _mm256_add_ps(a, b); }
  [[gnu::always_inline]] static type subtract(type a, type b) { return _mm256_sub_ps(a, b); }
  [[gnu::always_inline]] static type multiply_add(type a, type b, type c) { return _mm256_fmadd_ps(a, b, c); }
  [[gnu::always_inline]] static void keep_in_register(type& v) { asm("" : "+v"(v)); }
  [[gnu::always_inline]] static void store(float* p, type v) { _mm256_storeu_ps(p, v); }
  /// p on a 32-byte boundary.
  [[gnu::always_inline]] static void store_streaming(float* p, type v) { _mm256_stream_ps(p, v); }
};

template <>
struct SimdRegister<double> {
  using type = __m256d;
  static constexpr int lanes = 4;
  [[gnu::always_inline]] static type zero() { return _mm256_setzero_pd(); }
  [[gnu::always_inline]] static type broadcast(double a) { return _mm256_set1_pd(a); }
  [[gnu::always_inline]] static type load(const double* p) { return _mm256_loadu_pd(p); }
  [[gnu::always_inline]] static type add(type a, type b) { return _mm256_add_pd(a, b); }
  [[gnu::always_inline]] static type subtract(type a, type b) { return _mm256_sub_pd(a, b); }
  [[gnu::always_inline]] static type multiply_add(type a, type b, type c) { return _mm256_fmadd_pd(a, b, c); }
  [[gnu::always_inline]] static void keep_in_register(type& v) { asm("" : "+v"(v)); }
  [[gnu::always_inline]] static void store(double* p, type v) { _mm256_storeu_pd(p, v); }
  [[gnu::always_inline]] static void store_streaming(double* p, type v) { _mm256_stream_pd(p, v); }
};
#endif

/// Entries of T in one SIMD register; 0 where the target has none for T.
template <class T>
inline constexpr int simd_lanes = SimdRegister<T>::lanes;

/// Whether `count` entries of T fill a whole number of SIMD registers (never where there are none). The divisor
/// is at least 1, so code compiled for every target sees no zero divisor in a discarded branch.
template <class T>
constexpr bool whole_simd_registers(int count) {
  return simd_lanes<T> > 0 && count % (simd_lanes<T> > 0 ? simd_lanes<T> : 1) == 0;
}

/// SIMD registers the target has (32 with AVX-512, 16 with AVX2); 0 where it has none.
inline constexpr int simd_register_count = CAMEX_SIMD_REGISTER_BYTES == 64 ? 32 : CAMEX_SIMD_REGISTER_BYTES == 32 ? 16 : 0;

}  // namespace camex::detail
