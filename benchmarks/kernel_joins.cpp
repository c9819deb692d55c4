// How long a host kernel takes when every kernel ends by waiting for all of Kokkos' threads: many equal kernels
// of independent iterations (200 dependent multiply-adds each, no memory traffic to speak of), run back to back,
// with Kokkos' equal split of the iterations (static) or with them handed out as threads come free (dynamic).
// benchmarks/under_load.py runs it alone and beside another process: there it shows that handing work out helps
// kernels of many milliseconds and not the short kernels a training step is made of (docs/reliability.md).
//
// usage: camex_kernel_joins ITEMS KERNELS static|dynamic     prints {"us_per_kernel": ...}
#include <Kokkos_Core.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

using Space = Kokkos::DefaultHostExecutionSpace;

struct Work {
  Kokkos::View<float*, Space::memory_space> x;
  KOKKOS_INLINE_FUNCTION void operator()(long i) const {
    float v = x(i);
    for (int r = 0; r < 200; ++r) v = v * 0.999f + 0.001f;
    x(i) = v;
  }
};

template <class Policy>
double seconds_for(const Policy& policy, int kernels, const Work& work) {
  Kokkos::parallel_for("kernel_joins", policy, work);  // warm-up: the thread pool, first touch
  const auto began = std::chrono::steady_clock::now();
  for (int k = 0; k < kernels; ++k) Kokkos::parallel_for("kernel_joins", policy, work);
  Space().fence();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
}

}  // namespace

int main(int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  const std::string schedule = argc == 4 ? argv[3] : "";
  const long items = argc == 4 ? std::atol(argv[1]) : 0;
  const int kernels = argc == 4 ? std::atoi(argv[2]) : 0;
  if (items <= 0 || kernels <= 0 || (schedule != "static" && schedule != "dynamic")) {
    std::fprintf(stderr, "usage: camex_kernel_joins ITEMS KERNELS static|dynamic (ITEMS, KERNELS > 0)\n");
    return 2;
  }
  const Work work{Kokkos::View<float*, Space::memory_space>("x", items)};
  const double seconds =
      schedule == "static" ? seconds_for(Kokkos::RangePolicy<Space>(0, items), kernels, work)
                           : seconds_for(Kokkos::RangePolicy<Space, Kokkos::Schedule<Kokkos::Dynamic>>(0, items), kernels, work);
  std::printf("{\"items\": %ld, \"kernels\": %d, \"schedule\": \"%s\", \"us_per_kernel\": %.3f}\n", items, kernels,
              schedule.c_str(), 1e6 * seconds / kernels);
  return 0;
}
