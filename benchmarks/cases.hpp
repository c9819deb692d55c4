#pragma once
// The benchmark families of camex_bench, registered by main() in kernels.cpp.

#include <camex/camex.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <vector>

namespace camex::bench {

/// How every case is timed: wall time in milliseconds, and besides Google Benchmark's mean and median over the
/// repetitions their minimum, which benchmarks/run reports. On a shared machine interference only ever adds time,
/// so the best repetition is the kernel's own speed, and it is what the ceilings report (best of STREAM and SGEMM
/// runs) and what PyTorch's side reports: best against best.
inline benchmark::internal::Benchmark* timed(benchmark::internal::Benchmark* b) {
  return b->UseRealTime()->Unit(benchmark::kMillisecond)->ComputeStatistics("min", [](const std::vector<double>& v) {
    return *std::min_element(v.begin(), v.end());
  });
}

/// The least memory traffic a case must move, read and written apart (bytes): the report's GB/s counts their sum,
/// its roofline the time to read `read` bytes at the read ceiling and write `written` at the write ceiling.
inline void traffic(benchmark::State& state, double read, double written) {
  state.counters["bytes"] = read + written;
  state.counters["bytes_read"] = read;
  state.counters["bytes_written"] = written;
}

/// Curvature factors drawn around their initial value, so no product is special (identity, zeros).
template <class Policy>
void perturb_factors(Policy& policy) {
  using Space = typename Policy::execution_space;
  using T = typename Policy::scalar_type;
  std::uint32_t tensor = 100;
  for (auto& parameter : policy.parameters()) {
    const auto v = parameter.value;
    const CounterRng rng(7, 0);
    const std::uint32_t t = tensor++;
    Kokkos::parallel_for("bench::perturb", Kokkos::RangePolicy<Space>(0, v.extent(0)), KOKKOS_LAMBDA(std::size_t k) {
      v(k) += static_cast<T>(0.1 * (rng.uniform({t, 0, k}) - 0.5));
    });
  }
  Space().fence();
}

/// One step (prepare + merge) of every built-in merge policy; see policies.cpp.
void register_policy_benchmarks();

/// Forward and backward of the merged layers, with where the time goes; see layers.cpp.
void register_layer_benchmarks();

}  // namespace camex::bench
