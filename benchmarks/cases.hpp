#pragma once
// The benchmark families of camex_bench, registered by main() in kernels.cpp.

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

/// One step (prepare + merge) of every built-in merge policy; see policies.cpp.
void register_policy_benchmarks();

}  // namespace camex::bench
