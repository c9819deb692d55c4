// A user's program: merge two experts on the default execution space and check the result.
#include <camex/camex.hpp>

#include <cmath>
#include <cstdio>

int main() {
  Kokkos::ScopeGuard kokkos;
  const int P = 1000;
  camex::Matrix<float> experts("experts", 2, P);
  camex::Matrix<float> scores("scores", 1, 2);
  camex::Matrix<float> merged("merged", 1, P);
  auto e = Kokkos::create_mirror_view(experts);
  auto s = Kokkos::create_mirror_view(scores);
  for (int p = 0; p < P; ++p) {
    e(0, p) = 1.0f + p;
    e(1, p) = 2.0f - p;
  }
  s(0, 0) = 0.25f;
  s(0, 1) = 0.75f;
  Kokkos::deep_copy(experts, e);
  Kokkos::deep_copy(scores, s);
  camex::soft_merge(Kokkos::DefaultExecutionSpace{}, scores, experts, merged);
  auto m = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, merged);
  for (int p = 0; p < P; ++p) {
    const float expected = 0.25f * (1.0f + p) + 0.75f * (2.0f - p);
    if (std::abs(m(0, p) - expected) > 1e-4f * (1 + std::abs(expected))) {
      std::printf("merged(0, %d) = %g, expected %g\n", p, m(0, p), expected);
      return 1;
    }
  }
  std::printf("consumer: merged %d parameters of 2 experts on %s\n", P, Kokkos::DefaultExecutionSpace::name());
  return 0;
}
