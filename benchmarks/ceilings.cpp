// The machine's ceilings, measured in the same run as the kernels they judge: STREAM copy and triad, the
// streaming write rate and the read rate on the default Kokkos execution space, and a large SGEMM twice: through the system BLAS
// (OpenBLAS here, the GEMM PyTorch calls; Debian's 0.3.21 runs its Haswell AVX2 kernel on CPUs it does not know)
// and through Eigen compiled for this CPU (the compute ceiling camex's own kernels are judged against). Where the
// default space is a GPU, also its device-to-device copy (the bandwidth ceiling there) and an 8192^3 SGEMM through
// camex::gemm (cuBLAS), in fp32 and with TF32 allowed. Prints JSON.
#include <camex/kernels/gemm.hpp>
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
              "\"device_copy_GBps\": %.3f, \"sgemm_GFLOPs\": %.3f, \"sgemm_native_GFLOPs\": %.3f, \"sgemm_n\": %d, ",
              stream.copy_GBps, stream.triad_GBps, stream.write_GBps, stream.read_GBps, stream.device_copy_GBps, blas, native, n);
  using Space = Kokkos::DefaultExecutionSpace;
  if constexpr (!static_cast<bool>(Kokkos::SpaceAccessibility<Space, Kokkos::HostSpace>::accessible)) {
    const int dn = 8192;
    Kokkos::View<float*, Space::memory_space> da("sgemm::a", std::size_t(dn) * dn), db("sgemm::b", std::size_t(dn) * dn),
        dc("sgemm::c", std::size_t(dn) * dn);
    Kokkos::deep_copy(da, 0.5f);
    Kokkos::deep_copy(db, 0.25f);
    const camex::GemmBatch<float> product{.m = dn, .n = dn, .k = dn, .a = da.data(), .lda = dn, .b = db.data(),
                                          .ldb = dn, .c = dc.data(), .ldc = dn};
    const auto device_gflops = [&](bool tf32) {
      camex::allow_tf32(tf32);
      camex::gemm(Space{}, product);  // warm-up: cuBLAS's handle and kernel choice
      const double seconds = camex::perf::best_seconds(Space{}, 5, [&] { camex::gemm(Space{}, product); });
      camex::allow_tf32(false);
      return 2.0 * dn * dn * double(dn) / seconds * 1e-9;
    };
    const double fp32 = device_gflops(false), tf32 = device_gflops(true);
    std::printf("\"device_sgemm_GFLOPs\": %.3f, \"device_sgemm_tf32_GFLOPs\": %.3f, \"device_sgemm_n\": %d, ", fp32, tf32, dn);
  }
  std::printf("\"execution_space\": \"%s\", \"concurrency\": %d}\n", Space::name(), static_cast<int>(Space().concurrency()));
  return 0;
}
