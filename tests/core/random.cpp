// The counter-based generator: Random123's known answers, the same numbers on every backend, tiling and thread
// count, and uniformity.
#include "camex/core/random.hpp"

#include "testing.hpp"

#include <array>
#include <cmath>
#include <vector>

using namespace camex;
using namespace camex::testing;

BOOST_AUTO_TEST_SUITE(counter_rng)

namespace {
// At namespace scope: CUDA forbids function-local types in what a device lambda captures.
struct Kat {
  Philox4x32::counter_type counter;
  Philox4x32::key_type key;
  std::array<std::uint32_t, 4> expected;
};
}  // namespace

// Published known-answer vectors of Philox4x32-10 (Random123, tests/kat_vectors), evaluated on the device.
BOOST_AUTO_TEST_CASE(philox_known_answers) {
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, {{0, 0}}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}}, {{0xffffffff, 0xffffffff}},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}}, {{0xa4093822, 0x299f31d0}},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const auto& kat : kats) {
    Kokkos::View<std::uint32_t[4], typename Space::memory_space> out("out");
    Kokkos::parallel_for(Kokkos::RangePolicy<Space>(0, 1), KOKKOS_LAMBDA(int) {
      const auto r = Philox4x32::apply(kat.counter, kat.key);
      for (int i = 0; i < 4; ++i) out(i) = r[i];
    });
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, out);
    for (int i = 0; i < 4; ++i) BOOST_TEST(host(i) == kat.expected[i]);
  }
}

// A draw depends on its site only: filling the same sites with three different work decompositions on the device
// (one element per item with two chunk sizes, and teams with vector lanes) gives what a plain host loop gives.
BOOST_AUTO_TEST_CASE(same_numbers_for_any_decomposition) {
  const CounterRng rng(test_seed(), 17);
  const std::size_t n = 100003;
  std::vector<std::uint32_t> expected(n);
  for (std::size_t p = 0; p < n; ++p) expected[p] = rng.bits({3, 5, p});

  Kokkos::View<std::uint32_t*, typename Space::memory_space> got("got", n);
  const auto compare = [&](const char* how) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, got);
    std::size_t mismatches = 0;
    for (std::size_t p = 0; p < n; ++p) mismatches += host(p) != expected[p];
    BOOST_TEST(mismatches == 0u, how << ": " << mismatches << " of " << n << " draws differ from the host loop");
    Kokkos::deep_copy(got, 0u);
  };
  for (int chunk : {1, 97}) {
    Kokkos::parallel_for(Kokkos::RangePolicy<Space>(0, n).set_chunk_size(chunk),
                         KOKKOS_LAMBDA(std::size_t p) { got(p) = rng.bits({3, 5, p}); });
    compare(chunk == 1 ? "range, chunk 1" : "range, chunk 97");
  }
  const int per_team = 1000;
  const int teams = static_cast<int>((n + per_team - 1) / per_team);
  using Member = typename Kokkos::TeamPolicy<Space>::member_type;
  Kokkos::parallel_for(Kokkos::TeamPolicy<Space>(teams, Kokkos::AUTO, 4), KOKKOS_LAMBDA(const Member& team) {
    const std::size_t begin = static_cast<std::size_t>(team.league_rank()) * per_team;
    const std::size_t end = begin + per_team < n ? begin + per_team : n;
    Kokkos::parallel_for(Kokkos::TeamVectorRange(team, begin, end), [&](std::size_t p) { got(p) = rng.bits({3, 5, p}); });
  });
  compare("teams with vector lanes");

  // block() is the batched form of bits(): word i of block q is element 4q + i.
  for (std::uint64_t q : {0ull, 1ull, 12345ull}) {
    const auto block = rng.block(3, 5, q);
    for (int i = 0; i < 4; ++i) BOOST_TEST(block[i] == rng.bits({3, 5, 4 * q + i}));
  }
}

// fill_bits, the batched form used by the DARE draws, is bits() for every start alignment and count: the
// unaligned head, runs of 64 and 16 blocks (the AVX-512 paths where compiled in), the remaining whole blocks, the
// tail, and a run across the 2^32 boundary of the block counter's low word. Evaluated in Space's kernels.
BOOST_AUTO_TEST_CASE(fill_bits_is_bits_in_bulk) {
  const CounterRng rng(test_seed(), 23);
  const std::uint64_t starts[] = {0, 1, 2, 3, 4 * 12345 + 2, (std::uint64_t{1} << 34) - 4 * 70 + 1};
  const int counts[] = {0, 1, 3, 4, 7, 63, 64, 67, 255, 256, 257, 259, 700};
  const int most = 700;
  Kokkos::View<std::uint32_t*, typename Space::memory_space> got("got", most);
  for (const std::uint64_t first : starts)
    for (const int count : counts) {
      Kokkos::deep_copy(got, 0u);
      Kokkos::parallel_for(Kokkos::RangePolicy<Space>(0, 1), KOKKOS_LAMBDA(int) { rng.fill_bits(7, 2, first, count, got.data()); });
      auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, got);
      int mismatches = 0;
      for (int q = 0; q < count; ++q) mismatches += host(q) != rng.bits({7, 2, first + static_cast<std::uint64_t>(q)});
      for (int q = count; q < most; ++q) mismatches += host(q) != 0u;
      BOOST_TEST(mismatches == 0, "first " << first << ", count " << count << ": " << mismatches << " words differ");
    }
}

// Different seeds, steps, tensors, experts or elements give different streams.
BOOST_AUTO_TEST_CASE(streams_differ) {
  const CounterRng a(test_seed(), 0);
  const auto differs = [&](const CounterRng& other, DrawSite site_a, DrawSite site_b) {
    int same = 0;
    for (std::uint64_t p = 0; p < 64; ++p) {
      site_a.element = site_b.element = p;
      same += a.bits(site_a) == other.bits(site_b);
    }
    return same < 2;
  };
  BOOST_TEST(differs(CounterRng(test_seed() + 1, 0), {0, 0, 0}, {0, 0, 0}), "seed");
  BOOST_TEST(differs(CounterRng(test_seed(), 1), {0, 0, 0}, {0, 0, 0}), "step");
  BOOST_TEST(differs(a, {0, 0, 0}, {1, 0, 0}), "tensor");
  BOOST_TEST(differs(a, {0, 0, 0}, {0, 1, 0}), "expert");
}

// Uniformity of uniform() over 2^20 draws made on the device, in 1024 equal bins: the chi-square statistic has
// 1023 degrees of freedom (mean 1023, sd 45.2); the bound 1023 + 6 sd is exceeded with probability < 1e-8, so
// with a fresh seed the test fails only for a broken generator. The mean must lie within 6 sd (sd = 1/sqrt(12 n))
// of 1/2, and each of the 32 bits of bits() must be set in half the draws within 6 sd.
BOOST_AUTO_TEST_CASE(uniform_and_balanced_bits) {
  BOOST_TEST_CONTEXT("CAMEX_TEST_SEED=" << test_seed()) {
    const std::size_t n = std::size_t{1} << 20;
    const CounterRng rng(test_seed(), 3);
    Kokkos::View<float*, typename Space::memory_space> u("u", n);
    Kokkos::View<std::uint32_t*, typename Space::memory_space> w("w", n);
    Kokkos::parallel_for(Kokkos::RangePolicy<Space>(0, n), KOKKOS_LAMBDA(std::size_t p) {
      u(p) = rng.uniform({1, 2, p});
      w(p) = rng.bits({2, 1, p});
    });
    auto hu = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, u);
    auto hw = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, w);
    std::vector<double> bins(1024, 0.0);
    std::vector<double> ones(32, 0.0);
    double sum = 0;
    std::size_t outside = 0;
    for (std::size_t p = 0; p < n; ++p) {
      if (!(hu(p) >= 0.0f && hu(p) < 1.0f)) {
        ++outside;
        continue;
      }
      bins[static_cast<std::size_t>(hu(p) * 1024)] += 1;
      sum += hu(p);
      for (int bit = 0; bit < 32; ++bit) ones[bit] += (hw(p) >> bit) & 1u;
    }
    BOOST_REQUIRE_MESSAGE(outside == 0u, outside << " draws outside [0, 1)");
    const double expected = static_cast<double>(n) / 1024;
    double chi2 = 0;
    for (double count : bins) chi2 += (count - expected) * (count - expected) / expected;
    BOOST_TEST(chi2 < 1023 + 6 * std::sqrt(2.0 * 1023));
    BOOST_TEST(std::abs(sum / n - 0.5) < 6 / std::sqrt(12.0 * n));
    for (int bit = 0; bit < 32; ++bit)
      BOOST_TEST(std::abs(ones[bit] / n - 0.5) < 6 * 0.5 / std::sqrt(double(n)), "bit " << bit);
  }
}

// normal(): mean 0 and variance 1 within 6 standard errors over 2^18 draws.
BOOST_AUTO_TEST_CASE(normal_moments) {
  const std::size_t n = std::size_t{1} << 18;
  const CounterRng rng(test_seed(), 4);
  double sum = 0, sum_sq = 0;
  Kokkos::parallel_reduce(Kokkos::RangePolicy<Space>(0, n), KOKKOS_LAMBDA(std::size_t p, double& s) {
    s += rng.normal({0, 0, p});
  }, sum);
  Kokkos::parallel_reduce(Kokkos::RangePolicy<Space>(0, n), KOKKOS_LAMBDA(std::size_t p, double& s) {
    const double z = rng.normal({0, 0, p});
    s += z * z;
  }, sum_sq);
  BOOST_TEST(std::abs(sum / n) < 6 / std::sqrt(double(n)));
  BOOST_TEST(std::abs(sum_sq / n - 1) < 6 * std::sqrt(2.0 / n));
}

BOOST_AUTO_TEST_SUITE_END()
