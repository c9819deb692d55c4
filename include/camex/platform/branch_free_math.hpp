#pragma once
// Float functions written without calls or branches, so that a host loop of them vectorises: GCC turns a loop
// of libm's expf into one call per entry, and elementwise kernels over a layer's activations (the GELU, softmaxes)
// then cost several nanoseconds an entry. The same code runs in device code, so host and device compute the same
// approximation.

#include <Kokkos_Core.hpp>

#include "camex/platform/kokkos_compat.hpp"

#include <cstdint>
#include <cstring>

namespace camex::math {

/// 2^n for an integer n in [-126, 127], built from its exponent bits.
KOKKOS_INLINE_FUNCTION float exp2_integer(std::int32_t n) {
  const std::int32_t bits = (n + 127) << 23;
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

/// e^x in float, within 1.5 units in the last place over [-87, 88] (tests/platform/branch_free_math.cpp measures
/// about 0.95 where the compiler fuses multiply-adds, 1.2 where it does not);
/// x is clamped to that range first, so e^x saturates at about 6e-39 and 1.7e38 instead of reaching 0 and
/// infinity. x = n ln 2 + r with n = round(x / ln 2), |r| <= ln 2 / 2; ln 2 is split in two parts (the first
/// exact in 9 bits, so n times it is exact) to keep r accurate; e^r is its Taylor polynomial to degree 7, whose
/// truncation error on |r| <= ln 2 / 2 is below 5e-9 relative, under float's rounding. NaN gives NaN.
KOKKOS_INLINE_FUNCTION float branch_free_exp(float x) {
  constexpr float log2_e = 1.44269504088896341f;
  constexpr float ln2_high = 0.693359375f;          // 355 / 512
  constexpr float ln2_low = -2.12194440054690583e-4f;  // ln 2 - 355 / 512
  constexpr float round_shift = 12582912.0f;       // 1.5 * 2^23: adding it leaves an integer's float, rounded
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float n = (x * log2_e + round_shift) - round_shift;
  const float r = (x - n * ln2_high) - n * ln2_low;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * exp2_integer(static_cast<std::int32_t>(n));
}

/// The exponential of the elementwise kernels (activations, softmaxes): branch_free_exp in float, libm's exp in
/// double, where arrays are a reference computation and the last bit matters more than speed.
KOKKOS_INLINE_FUNCTION float elementwise_exp(float x) { return branch_free_exp(x); }
KOKKOS_INLINE_FUNCTION double elementwise_exp(double x) { return exp(x); }

}  // namespace camex::math
