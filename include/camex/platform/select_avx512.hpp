#pragma once
// The compaction pass of the radix select (kernels/top_k.hpp) for float rows with AVX-512: sixteen entries per step,
// the matching ones compressed into place, no branch per entry. The portable loop does one entry per step with a
// carried count and left two thirds of a TIES step's select in that pass (0.9 ns per entry against 0.25 here, one
// core of the development machine).
//
// Included only by host-only compilations (not under nvcc, hipcc or SYCL), where __AVX512F__, __AVX512BW__ and
// __AVX512VL__ say the compiler may emit these instructions.

#include <immintrin.h>

#include <bit>
#include <cstdint>

namespace camex::detail {

/// For the magnitude keys k of x[0, len) (float bits without the sign): mask[q] = k > hi (unless mask is null), and
/// the keys and indices (first + q) of the entries with lo <= k <= hi written to keys[] and indices[] in order.
/// Returns how many were written and adds to *above the count of k > hi; both arrays need room for len + 15 entries
/// (whole vectors are stored).
inline int mark_and_list_avx512(const float* x, int len, std::uint32_t lo, std::uint32_t hi, std::uint8_t* mask,
                                std::uint32_t first, std::uint32_t* keys, std::uint32_t* indices, std::uint64_t* above) {
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), low = _mm512_set1_epi32(static_cast<int>(lo)),
                high = _mm512_set1_epi32(static_cast<int>(hi)), width = _mm512_set1_epi32(static_cast<int>(hi - lo));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int count = 0, q = 0;
  std::uint64_t marked = 0;
  for (; q + 16 <= len; q += 16) {
    const __m512i key = _mm512_and_si512(_mm512_loadu_si512(x + q), magnitude);
    const __mmask16 over = _mm512_cmpgt_epu32_mask(key, high);
    const __mmask16 inside = _mm512_cmple_epu32_mask(_mm512_sub_epi32(key, low), width);  // lo <= k <= hi, one compare
    if (mask) _mm_storeu_si128(reinterpret_cast<__m128i*>(mask + q), _mm_maskz_set1_epi8(over, 1));
    const __m512i index = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int>(first + static_cast<std::uint32_t>(q))));
    _mm512_storeu_si512(keys + count, _mm512_maskz_compress_epi32(inside, key));
    _mm512_storeu_si512(indices + count, _mm512_maskz_compress_epi32(inside, index));
    count += std::popcount(static_cast<unsigned>(inside));
    marked += static_cast<std::uint64_t>(std::popcount(static_cast<unsigned>(over)));
  }
  for (; q < len; ++q) {
    const std::uint32_t key = std::bit_cast<std::uint32_t>(x[q]) & 0x7fffffffu;
    if (mask) mask[q] = key > hi;
    marked += key > hi;
    keys[count] = key;
    indices[count] = first + static_cast<std::uint32_t>(q);
    count += key - lo <= hi - lo;
  }
  *above += marked;
  return count;
}

}  // namespace camex::detail
