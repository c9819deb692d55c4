// The machine's ceilings, measured in the same run as the kernels they judge: STREAM copy and triad on the
// default Kokkos execution space, and a large SGEMM through the system BLAS (OpenBLAS here). Prints JSON.
#include <camex/perf/stream.hpp>

#include <cblas.h>

#include <cstdio>
#include <vector>

int main() {
  Kokkos::ScopeGuard kokkos;
  const auto stream = camex::perf::measure_stream(Kokkos::DefaultExecutionSpace{});

  // 2048^3: 17 GFLOP per call, long enough to reach steady state, short enough to repeat.
  const int n = 2048;
  std::vector<float> a(std::size_t(n) * n, 0.5f), b(std::size_t(n) * n, 0.25f), c(std::size_t(n) * n, 0.0f);
  const auto sgemm = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
  };
  sgemm();  // warm-up: thread pool start, page faults
  const double seconds = camex::perf::best_seconds(Kokkos::DefaultHostExecutionSpace{}, 5, sgemm);
  const double gflops = 2.0 * n * n * double(n) / seconds * 1e-9;

  std::printf("{\"stream_copy_GBps\": %.3f, \"stream_triad_GBps\": %.3f, \"sgemm_GFLOPs\": %.3f, "
              "\"sgemm_n\": %d, \"execution_space\": \"%s\", \"concurrency\": %d}\n",
              stream.copy_GBps, stream.triad_GBps, gflops, n, Kokkos::DefaultExecutionSpace::name(),
              static_cast<int>(Kokkos::DefaultExecutionSpace().concurrency()));
  return 0;
}
