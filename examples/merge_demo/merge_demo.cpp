// merge_demo: soft-merges N = 8 expert tensors of P = 2^22 parameters into B = 4 merged tensors on every Kokkos
// execution space compiled in, checks every merged parameter against a double-precision host reference, and
// prints the time, the achieved bandwidth and its fraction of the STREAM triad bandwidth measured on the same
// space just before. Exits non-zero if any result is wrong.
#include <camex/camex.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

namespace {

constexpr int experts = 8, groups = 4;
constexpr std::size_t params = std::size_t{1} << 22;

template <class Space>
bool demo() {
  const Space space;
  std::printf("\n== %s (concurrency %d)\n", Space::name(), static_cast<int>(space.concurrency()));
  const auto stream = camex::perf::measure_stream(space);
  std::printf("   measured STREAM: copy %.1f GB/s, triad %.1f GB/s\n", stream.copy_GBps, stream.triad_GBps);

  camex::Matrix<float, Space> scores("scores", groups, experts), w("experts", experts, params),
      merged("merged", groups, params);
  const camex::CounterRng rng(7, 0);
  camex::fill_uniform(space, scores, rng, 0, 0.0f, 1.0f);
  camex::fill_uniform(space, w, rng, 1, -1.0f, 1.0f);
  Kokkos::deep_copy(merged, 0.0f);
  const double seconds = camex::perf::best_seconds(space, 5, [&] { camex::soft_merge(space, scores, w, merged); });
  const double bytes = 4.0 * (experts + groups) * params;

  // Reference in double on the host; the bound is the recursive-summation bound N*u*sum|s*w| (see the tests).
  auto s = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, scores);
  auto e = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, w);
  auto m = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, merged);
  std::size_t wrong = 0;
  double worst = 0;
  for (int b = 0; b < groups; ++b)
    for (std::size_t p = 0; p < params; ++p) {
      double ref = 0, magnitude = 0;
      for (int n = 0; n < experts; ++n) {
        ref += double(s(b, n)) * double(e(n, p));
        magnitude += std::abs(double(s(b, n)) * double(e(n, p)));
      }
      const double error = std::abs(m(b, p) - ref), bound = experts * 0x1p-24 * magnitude + 1e-30;
      worst = std::max(worst, error / bound);
      wrong += error > bound;
    }

  std::printf("   soft merge  scores [%d, %d] x experts [%d, %zu] -> merged [%d, %zu] (float)\n", groups, experts,
              experts, params, groups, params);
  std::printf("   time %.3f ms (best of 5), %.1f GB/s = %.0f%% of triad; %.0f MB moved, %.2f GFLOP/s\n", seconds * 1e3,
              bytes / seconds * 1e-9, 100 * bytes / seconds * 1e-9 / stream.triad_GBps, bytes * 1e-6,
              2.0 * groups * experts * params / seconds * 1e-9);
  std::printf("   check against the double reference: %s (%zu of %zu outside the bound; worst error %.2f of the bound)\n",
              wrong == 0 ? "PASS" : "FAIL", wrong, groups * params, worst);
  return wrong == 0;
}

}  // namespace

int main(int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  bool ok = true;
#if defined(KOKKOS_ENABLE_SERIAL)
  ok &= demo<Kokkos::Serial>();
#endif
#if defined(KOKKOS_ENABLE_OPENMP)
  ok &= demo<Kokkos::OpenMP>();
#endif
#if defined(KOKKOS_ENABLE_CUDA)
  ok &= demo<Kokkos::Cuda>();
#endif
  std::printf("\n%s\n", ok ? "all execution spaces merged correctly" : "FAILED: see above");
  return ok ? 0 : 1;
}
