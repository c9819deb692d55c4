// The machine's ceilings, measured in the same run as the kernels they judge: STREAM copy and triad, the
// streaming write rate and the read rate on the default Kokkos execution space, and a large SGEMM twice: through the system BLAS
// (OpenBLAS here, the GEMM PyTorch calls; Debian's 0.3.21 runs its Haswell AVX2 kernel on CPUs it does not know)
// and through Eigen compiled for this CPU (the compute ceiling camex's own kernels are judged against). Prints JSON.
#include <camex/perf/stream.hpp>

#include <Eigen/Core>
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
  using Map = Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
  const auto native_sgemm = [&] { Map(c.data(), n, n).noalias() = Map(a.data(), n, n) * Map(b.data(), n, n); };
  const auto gflops = [&](const auto& gemm) {
    gemm();  // warm-up: thread pool start, page faults
    return 2.0 * n * n * double(n) / camex::perf::best_seconds(Kokkos::DefaultHostExecutionSpace{}, 5, gemm) * 1e-9;
  };
  const double blas = gflops(sgemm), native = gflops(native_sgemm);

  std::printf("{\"stream_copy_GBps\": %.3f, \"stream_triad_GBps\": %.3f, \"stream_write_GBps\": %.3f, \"stream_read_GBps\": %.3f, "
              "\"sgemm_GFLOPs\": %.3f, \"sgemm_native_GFLOPs\": %.3f, \"sgemm_n\": %d, \"execution_space\": \"%s\", \"concurrency\": %d}\n",
              stream.copy_GBps, stream.triad_GBps, stream.write_GBps, stream.read_GBps, blas, native, n, Kokkos::DefaultExecutionSpace::name(),
              static_cast<int>(Kokkos::DefaultExecutionSpace().concurrency()));
  return 0;
}
