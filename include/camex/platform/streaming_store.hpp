#pragma once
// Copies a finished tile to memory with non-temporal stores where the CPU has them. A merged output that is far
// larger than the caches would otherwise be read into cache before it is overwritten (read-for-ownership), which
// costs as much traffic as writing it; at B = 32 merged outputs that is most of the merge's time.
//
// Only host code paths call this (the tiled schedule on host spaces); device passes of a CUDA build compile the
// plain loop.

#include <Kokkos_Core.hpp>

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

/// dst[0, len) = src[0, len): scalar stores up to a vector boundary, then whole-vector non-temporal stores (a full
/// 64-byte line per store where AVX-512 is compiled in, so no line waits half-written in a fill buffer).
template <class T>
inline void copy_streaming(T* dst, const T* src, int len) {
#if CAMEX_HAS_STREAMING_STORES
  if constexpr (sizeof(T) == 4 || sizeof(T) == 8) {
#if defined(__AVX512F__)
    constexpr int bytes = 64;
#else
    constexpr int bytes = 32;
#endif
    constexpr int lanes = bytes / sizeof(T);
    int p = 0;
    for (; p < len && reinterpret_cast<std::uintptr_t>(dst + p) % bytes != 0; ++p) dst[p] = src[p];
    for (; p + lanes <= len; p += lanes) {
      auto* to = reinterpret_cast<float*>(dst + p);
      const auto* from = reinterpret_cast<const float*>(src + p);
#if defined(__AVX512F__)
      _mm512_stream_ps(to, _mm512_loadu_ps(from));
#else
      _mm256_stream_ps(to, _mm256_loadu_ps(from));
#endif
    }
    for (; p < len; ++p) dst[p] = src[p];
    return;
  }
#endif
  for (int p = 0; p < len; ++p) dst[p] = src[p];
}

/// Orders this thread's non-temporal stores before anything it does next (they are weakly ordered on x86).
inline void streaming_fence() {
#if CAMEX_HAS_STREAMING_STORES
  _mm_sfence();
#endif
}

}  // namespace camex::detail
