#pragma once
// Counter-based random numbers: a draw is a pure function of (seed, step, stream, expert, element), so every
// backend, thread count and tiling gets the same numbers, and a kernel can draw element p's number wherever it
// happens to process p. The generator is Philox4x32-10 (Salmon et al., SC'11), checked against Random123's
// published known-answer vectors in the tests.

#include <Kokkos_Core.hpp>

#include <cstdint>

#include "camex/core/views.hpp"
#include "camex/platform/kokkos_compat.hpp"
#include "camex/platform/vectorize.hpp"

// Host-only compilations for AVX-512 CPUs draw whole runs of blocks with a hand-vectorised Philox.
#if defined(__AVX512F__) && !defined(__CUDACC__) && !defined(__HIPCC__) && !defined(SYCL_LANGUAGE_VERSION)
#define CAMEX_PHILOX_AVX512 1
#include "camex/platform/philox_avx512.hpp"
#endif

namespace camex {

/// One Philox4x32-10 evaluation: four 32-bit words out of a 128-bit counter and a 64-bit key.
struct Philox4x32 {
  using counter_type = Kokkos::Array<std::uint32_t, 4>;
  using key_type = Kokkos::Array<std::uint32_t, 2>;

  KOKKOS_INLINE_FUNCTION static counter_type apply(counter_type counter, key_type key) {
    for (int round = 0; round < 10; ++round) {
      if (round > 0) {
        key[0] += 0x9E3779B9u;  // Weyl increments: golden ratio and sqrt(3) - 1
        key[1] += 0xBB67AE85u;
      }
      const std::uint64_t product0 = std::uint64_t{0xD2511F53u} * counter[0];
      const std::uint64_t product1 = std::uint64_t{0xCD9E8D57u} * counter[2];
      const auto hi0 = static_cast<std::uint32_t>(product0 >> 32), lo0 = static_cast<std::uint32_t>(product0);
      const auto hi1 = static_cast<std::uint32_t>(product1 >> 32), lo1 = static_cast<std::uint32_t>(product1);
      counter = counter_type{{hi1 ^ counter[1] ^ key[0], lo1, hi0 ^ counter[3] ^ key[1], lo0}};
    }
    return counter;
  }
};

/// Where a random number is used: which draw stream of the model (StepContext::stream), which expert, which element.
struct DrawSite {
  std::uint32_t stream = 0;
  std::uint32_t expert = 0;
  std::uint64_t element = 0;
};

/// The random stream of one training step. Copy it into kernels by value; it is two words.
///
/// Layout: the step key is Philox(counter = {step_lo, step_hi, 0, 'cmx0'}, key = seed) truncated to 64 bits, so
/// steps are independent streams; within a step, site (t, e, p) reads word p mod 4 of
/// Philox(counter = {p / 4 (low 32 bits), p / 4 (high 32 bits), e, t}, key = step key).
class CounterRng {
 public:
  KOKKOS_INLINE_FUNCTION CounterRng(std::uint64_t seed, std::uint64_t step) {
    const auto out = Philox4x32::apply(
        {{static_cast<std::uint32_t>(step), static_cast<std::uint32_t>(step >> 32), 0u, 0x636d7830u}},
        {{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)}});
    key_ = {{out[0], out[1]}};
  }

  /// The four words of the block that holds elements 4q .. 4q+3 of (stream, expert).
  KOKKOS_INLINE_FUNCTION Philox4x32::counter_type block(std::uint32_t stream, std::uint32_t expert,
                                                        std::uint64_t quad) const {
    return Philox4x32::apply(
        {{static_cast<std::uint32_t>(quad), static_cast<std::uint32_t>(quad >> 32), expert, stream}}, key_);
  }

  /// 32 uniformly distributed bits for one site.
  KOKKOS_INLINE_FUNCTION std::uint32_t bits(const DrawSite& site) const {
    return block(site.stream, site.expert, site.element / 4)[static_cast<int>(site.element % 4)];
  }

  /// bits() of the `count` consecutive sites (stream, expert, first .. first + count - 1), into out[0, count):
  /// one Philox block per four sites, runs of 64 and of 16 blocks by AVX-512 where compiled in, and a loop over the
  /// other whole blocks that the compiler vectorises on the host.
  KOKKOS_INLINE_FUNCTION void fill_bits(std::uint32_t stream, std::uint32_t expert, std::uint64_t first, int count,
                                        std::uint32_t* out) const {
    int q = 0;
    for (; q < count && (first + q) % 4 != 0; ++q) out[q] = bits({stream, expert, first + q});
    const std::uint64_t quad0 = (first + q) / 4;
    const int quads = (count - q) / 4;
    std::uint32_t* block_out = out + q;
    int vectorised = 0;
#if defined(CAMEX_PHILOX_AVX512)
    for (; vectorised + 64 <= quads; vectorised += 64)
      detail::philox_avx512<4>(key_[0], key_[1], expert, stream, quad0 + static_cast<std::uint64_t>(vectorised),
                               block_out + 4 * vectorised);
    for (; vectorised + 16 <= quads; vectorised += 16)
      detail::philox_avx512<1>(key_[0], key_[1], expert, stream, quad0 + static_cast<std::uint64_t>(vectorised),
                               block_out + 4 * vectorised);
#endif
    CAMEX_IVDEP
    for (int j = vectorised; j < quads; ++j) {
      const auto words = block(stream, expert, quad0 + j);
      block_out[4 * j] = words[0];
      block_out[4 * j + 1] = words[1];
      block_out[4 * j + 2] = words[2];
      block_out[4 * j + 3] = words[3];
    }
    for (q += 4 * quads; q < count; ++q) out[q] = bits({stream, expert, first + q});
  }

  /// Uniform on [0, 1) with 24 random bits: exactly representable in float, so float and double agree.
  KOKKOS_INLINE_FUNCTION float uniform(const DrawSite& site) const { return to_unit_float(bits(site)); }

  /// Standard normal by Box-Muller from the two words of `site` and of its partner stream (the same element in
  /// expert index `~expert`), so each site costs two Philox blocks and stays independent of its neighbours.
  KOKKOS_INLINE_FUNCTION double normal(const DrawSite& site) const {
    const std::uint32_t w0 = bits(site);
    const std::uint32_t w1 = bits({site.stream, ~site.expert, site.element});
    const double u1 = (static_cast<double>(w0) + 1.0) * 0x1p-32;  // (0, 1]: log stays finite
    const double u2 = static_cast<double>(w1) * 0x1p-32;
    return math::sqrt(-2.0 * math::log(u1)) * math::cos(2.0 * 3.14159265358979323846 * u2);
  }

  KOKKOS_INLINE_FUNCTION static float to_unit_float(std::uint32_t word) {
    return static_cast<float>(word >> 8) * 0x1p-24f;
  }

 private:
  Philox4x32::key_type key_{};
};

/// Fills `m` on `space` with values uniform in [lo, hi): entry (r, c) is drawn at site (stream, 0, r * cols + c),
/// so the same generator fills the same matrix identically on every backend.
template <class ExecSpace, MatrixOn<ExecSpace> View>
  requires MutableMatrix<View>
void fill_uniform(const ExecSpace& space, const View& m, const CounterRng& rng, std::uint32_t stream,
                  typename View::value_type lo, typename View::value_type hi) {
  using T = typename View::value_type;
  const std::size_t cols = m.extent(1);
  Kokkos::parallel_for("camex::fill_uniform", Kokkos::RangePolicy<ExecSpace>(space, 0, m.extent(0) * cols),
                       KOKKOS_LAMBDA(std::size_t i) {
                         m(i / cols, i % cols) = lo + (hi - lo) * static_cast<T>(rng.uniform({stream, 0, i}));
                       });
}

}  // namespace camex
