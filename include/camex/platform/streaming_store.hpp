#pragma once
// Copies a finished tile to memory with non-temporal stores where the CPU has them. A merged output that is far
// larger than the caches would otherwise be read into cache before it is overwritten (read-for-ownership), which
// costs as much traffic as writing it; at B = 32 merged outputs that is most of the merge's time.
//
// Only host code paths call this (the tiled schedule on host spaces); device passes of a CUDA build compile the
// plain loop.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>

#if defined(__AVX__) && !defined(__CUDA_ARCH__) && !defined(__HIP_DEVICE_COMPILE__)
#include <immintrin.h>
#define CAMEX_HAS_STREAMING_STORES 1
#else
#define CAMEX_HAS_STREAMING_STORES 0
#endif

namespace camex::detail {

/// Whether outputs of `bytes` in total should bypass the caches: only when they cannot stay in the last-level
/// cache anyway. 16 MiB is at or above the L3 share of the CPUs camex has been measured on; smaller outputs are
/// likely to be read again (by the GEMM that applies the merged weights) while still cached.
inline bool prefer_streaming_stores(std::size_t bytes) {
  return CAMEX_HAS_STREAMING_STORES && bytes >= (std::size_t{16} << 20);
}

/// Bytes one non-temporal store writes (a whole 64-byte line where AVX-512 is compiled in, so no line waits
/// half-written in a fill buffer); 0 where there are none.
#if CAMEX_HAS_STREAMING_STORES && defined(__AVX512F__)
inline constexpr int streaming_store_bytes = 64;
#elif CAMEX_HAS_STREAMING_STORES
inline constexpr int streaming_store_bytes = 32;
#else
inline constexpr int streaming_store_bytes = 0;
#endif

/// The address boundary a non-temporal store needs; 1 where there are none, so that a test against it is
/// well-defined in code compiled for every target (a discarded branch is still checked for a zero divisor).
inline constexpr std::uintptr_t streaming_boundary = streaming_store_bytes > 0 ? streaming_store_bytes : 1;

/// Whether T's stores can bypass the caches: 4- and 8-byte types, on a CPU with streaming stores.
template <class T>
inline constexpr bool has_streaming_stores = streaming_store_bytes > 0 && (sizeof(T) == 4 || sizeof(T) == 8);

/// Whether a row of `len` entries at dst goes out in whole non-temporal stores: dst on a store boundary and the
/// length a whole number of stores.
template <class T>
inline bool whole_streaming_stores(const T* dst, std::size_t len) {
  if constexpr (has_streaming_stores<T>)
    return reinterpret_cast<std::uintptr_t>(dst) % streaming_boundary == 0 && len * sizeof(T) % streaming_boundary == 0;
  else
    return false;
}

/// Entries of T one non-temporal store writes.
template <class T>
inline constexpr int streaming_lanes = has_streaming_stores<T> ? streaming_store_bytes / static_cast<int>(sizeof(T)) : 1;

/// dst[0, streaming_lanes<T>) = src[0, streaming_lanes<T>) in one non-temporal store; dst on a store boundary.
/// Forced inline, so a register block's accumulators stay in registers until their stores.
template <class T>
[[gnu::always_inline]] inline void store_streaming_vector(T* dst, const T* src) {
#if CAMEX_HAS_STREAMING_STORES
  if constexpr (has_streaming_stores<T>) {
#if defined(__AVX512F__)
    _mm512_stream_ps(reinterpret_cast<float*>(dst), _mm512_loadu_ps(reinterpret_cast<const float*>(src)));
#else
    _mm256_stream_ps(reinterpret_cast<float*>(dst), _mm256_loadu_ps(reinterpret_cast<const float*>(src)));
#endif
    return;
  }
#endif
  *dst = *src;
}

/// dst[0, len) = src[0, len) in non-temporal stores only; whole_streaming_stores(dst, len) must hold.
template <class T>
inline void store_streaming(T* dst, const T* src, int len) {
  if constexpr (has_streaming_stores<T>) {
    for (int p = 0; p < len; p += streaming_lanes<T>) store_streaming_vector(dst + p, src + p);
  } else {
    for (int p = 0; p < len; ++p) dst[p] = src[p];
  }
}

/// dst[0, len) = src[0, len): scalar stores up to a store boundary, then whole non-temporal stores, then the tail.
template <class T>
inline void copy_streaming(T* dst, const T* src, int len) {
  int p = 0;
  if constexpr (has_streaming_stores<T>) {
    for (; p < len && reinterpret_cast<std::uintptr_t>(dst + p) % streaming_boundary != 0; ++p) dst[p] = src[p];
    const int whole = (len - p) / streaming_lanes<T> * streaming_lanes<T>;
    store_streaming(dst + p, src + p, whole);
    p += whole;
  }
  for (; p < len; ++p) dst[p] = src[p];
}

/// Orders this thread's non-temporal stores before anything it does next (they are weakly ordered on x86).
inline void streaming_fence() {
#if CAMEX_HAS_STREAMING_STORES
  _mm_sfence();
#endif
}

}  // namespace camex::detail
