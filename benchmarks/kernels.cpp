// Soft merge forward and backward at N = 8 experts of P = 2^22 parameters, B in {1, 4, 16, 32} routing groups,
// the TIES trim (exact top-k) and mask factors at the same size, and the draws of a DARE step.
// Each case reports its minimum traffic and work per call as counters "bytes" and "flops" (formulas in
// docs/performance.md), which benchmarks/run turns into GB/s and GFLOP/s.
#include "cases.hpp"

#include <camex/camex.hpp>
#include <camex/kernels/non_finite.hpp>

#include <benchmark/benchmark.h>

#include <span>
#include <string>
#include <vector>

namespace {

using Space = Kokkos::DefaultExecutionSpace;

/// Inputs uniform in [lo, hi), first touched by the threads that will use them.
void fill(const camex::Matrix<float, Space>& m, std::uint32_t tensor, float lo, float hi) {
  camex::fill_uniform(Space{}, m, camex::CounterRng(2025, 0), tensor, lo, hi);
  Space().fence();
}

constexpr int experts = 8;
constexpr std::size_t params = std::size_t{1} << 22;

void forward(benchmark::State& state, int groups) {
  camex::Matrix<float, Space> scores("scores", groups, experts), w("experts", experts, params),
      merged("merged", groups, params);
  fill(scores, 0, 0, 1);
  fill(w, 1, -1, 1);
  fill(merged, 2, 0, 0);
  for (auto _ : state) {
    camex::soft_merge(Space{}, scores, w, merged);
    Space().fence();
  }
  camex::bench::traffic(state, 4.0 * experts * params, 4.0 * groups * params);
  state.counters["flops"] = 2.0 * groups * experts * params;
}

void backward(benchmark::State& state, int groups) {
  camex::Matrix<float, Space> scores("scores", groups, experts), w("experts", experts, params),
      d_merged("d_merged", groups, params), d_scores("d_scores", groups, experts), d_w("d_experts", experts, params);
  fill(scores, 0, 0, 1);
  fill(w, 1, -1, 1);
  fill(d_merged, 2, -1, 1);
  fill(d_w, 3, 0, 0);
  const auto workspace =
      camex::make_workspace<Space>(camex::soft_merge_backward_workspace_bytes<float>(groups, experts, params));
  for (auto _ : state) {
    camex::soft_merge_backward(Space{}, scores, w, d_merged, d_scores, d_w, workspace);
    Space().fence();
  }
  camex::bench::traffic(state, 4.0 * (experts + groups) * params, 4.0 * experts * params);
  state.counters["flops"] = 4.0 * groups * experts * params;
}

/// The scan for non-finite operands a policy's prepare runs where no pass of its own reads the experts: one read.
void non_finite_scan(benchmark::State& state) {
  camex::Matrix<float, Space> w("experts", experts, params);
  fill(w, 1, -1, 1);
  const auto workspace = camex::make_workspace<Space>(sizeof(std::size_t));
  auto* cell = reinterpret_cast<std::size_t*>(workspace.data());
  for (auto _ : state) {
    const auto scan = camex::detail::arm_scan(Space{}, cell);
    camex::detail::scan_rows(Space{}, scan, w.data(), camex::row_stride(w), experts, params);
    benchmark::DoNotOptimize(camex::detail::first_non_finite(Space{}, scan));
  }
  camex::bench::traffic(state, 4.0 * experts * params, 0);
  state.counters["flops"] = 0;
}

/// The trim step of TIES: per-expert exact top-k by magnitude at density 0.2 (k = floor(0.2 P)).
void ties_top_k(benchmark::State& state) {
  camex::Matrix<float, Space> deltas("deltas", experts, params);
  camex::Matrix<std::uint8_t, Space> keep("keep", experts, params);
  fill(deltas, 4, -1, 1);
  const std::size_t k = camex::top_k_count("bench", 0.2, params);
  const auto workspace = camex::make_workspace<Space>(camex::top_k_workspace_bytes<float, Space>(experts, params));
  for (auto _ : state) {
    camex::top_k_by_magnitude(Space{}, deltas, k, keep, workspace);
    Space().fence();
  }
  camex::bench::traffic(state, 4.0 * experts * params, 1.0 * experts * params);  // every delta read, one mask byte written
  state.counters["flops"] = 0;
}

/// The TIES mask axis at density 0.2: trim, weighted sign election, disjoint-mean factors for every expert.
void ties_mask(benchmark::State& state) {
  camex::Matrix<float, Space> deltas("deltas", experts, params), factor("factor", experts, params);
  fill(deltas, 4, -1, 1);
  fill(factor, 5, 0, 0);
  const std::vector<double> weights(experts, 1.0);
  const camex::TiesOptions options{.density = 0.2};
  const auto workspace = camex::make_workspace<Space>(camex::ties_mask_workspace_bytes<float, Space>(experts, params));
  for (auto _ : state) {
    camex::ties_mask(Space{}, deltas, std::span<const double>(weights), options, factor, workspace);
    Space().fence();
  }
  // Minimum traffic: read the deltas (for the trim and the election) and write the factors.
  camex::bench::traffic(state, 4.0 * experts * params, 4.0 * experts * params);
  state.counters["flops"] = 0;
}

/// The election and factor pass of the TIES mask alone, the trim given, over deltas that stay in L2 (N = 8,
/// P = 8192: 256 KiB, plus the keep bytes and the factors): its compute, which the full-size cases hide behind
/// memory on a machine whose bandwidth varies run to run.
void ties_election(benchmark::State& state) {
  constexpr std::size_t resident = std::size_t{1} << 13;
  camex::Matrix<float, Space> deltas("deltas", experts, resident), factor("factor", experts, resident);
  fill(deltas, 4, -1, 1);
  fill(factor, 5, 0, 0);
  Kokkos::View<camex::detail::TrimBoundary*, Space::memory_space> trim("trim", experts);
  Kokkos::View<double*, Space::memory_space> weights("weights", experts);
  Kokkos::deep_copy(weights, 1.0);
  const std::uint64_t above = camex::detail::key_of(0.8f);  // |delta| > 0.8 of uniform deltas in [-1, 1): 1 in 5 kept
  Kokkos::parallel_for("bench::trim", Kokkos::RangePolicy<Space>(0, experts),
                       KOKKOS_LAMBDA(std::size_t i) { trim(i) = {above, 0}; });
  const camex::detail::TiesElection election{trim.data(), weights.data(), experts, true, true, 1.0};
  const float* tau = deltas.data();
  float* f = factor.data();
  Space().fence();
  for (auto _ : state) {
    camex::detail::for_each_tile(Space{}, "bench::ties_election", resident, camex::detail::TiesElection::chunk,
                                 KOKKOS_LAMBDA(std::size_t p0, int len) { election.apply<false>(p0, len, tau + p0, resident, f + p0, resident); });
    Space().fence();
  }
  camex::bench::traffic(state, 5.0 * experts * resident, 4.0 * experts * resident);
  state.counters["flops"] = 0;
}

/// The draws of one DARE step at the GPT-2 MLP shape (n = 7 experts of 768 x 3072 entries): CounterRng::fill_bits
/// at every (expert, entry) site in the runs of 256 DareDraws takes, each draw turned into keep / drop at p = 0.1,
/// with no operand read. No DARE step that draws its mask from the counter-based generator can take less.
void dare_draws(benchmark::State& state) {
  constexpr std::uint32_t n = 7;
  constexpr std::size_t sites = std::size_t{768} * 3072, run = camex::DareDraws::chunk, runs = sites / run;
  static_assert(sites % run == 0);
  Kokkos::View<std::uint32_t*, Space::memory_space> kept("kept", n * runs);
  const camex::CounterRng rng(2025, 1);
  for (auto _ : state) {
    Kokkos::parallel_for("bench::dare_draws", Kokkos::RangePolicy<Space>(0, n * runs), KOKKOS_LAMBDA(std::size_t t) {
      std::uint32_t bits[run];
      const auto expert = static_cast<std::uint32_t>(t / runs);
      rng.fill_bits(0, expert, (t % runs) * run, static_cast<int>(run), bits);
      std::uint32_t count = 0;
      for (std::size_t q = 0; q < run; ++q) count += !(camex::CounterRng::to_unit_float(bits[q]) < 0.1f);
      kept(t) = count;
    });
    Space().fence();
  }
  camex::bench::traffic(state, 0, 0);
  state.counters["flops"] = 0;
  state.counters["draws"] = static_cast<double>(n * sites);
}

}  // namespace

int main(int argc, char** argv) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  benchmark::Initialize(&argc, argv);
  for (int groups : {1, 4, 16, 32}) {
    const std::string shape = "/N=8/P=4194304/B=" + std::to_string(groups);
    camex::bench::timed(benchmark::RegisterBenchmark(("soft_merge_forward" + shape).c_str(), forward, groups));
    camex::bench::timed(benchmark::RegisterBenchmark(("soft_merge_backward" + shape).c_str(), backward, groups));
  }
  camex::bench::timed(benchmark::RegisterBenchmark("non_finite_scan/N=8/P=4194304", non_finite_scan));
  camex::bench::timed(benchmark::RegisterBenchmark("ties_top_k/N=8/P=4194304/density=0.2", ties_top_k));
  camex::bench::timed(benchmark::RegisterBenchmark("ties_mask/N=8/P=4194304/density=0.2", ties_mask));
  camex::bench::timed(benchmark::RegisterBenchmark("ties_election/N=8/P=8192", ties_election));
  camex::bench::timed(benchmark::RegisterBenchmark("dare_draws/768x3072/n=7/p=0.1", dare_draws));
  camex::bench::register_policy_benchmarks();
  camex::bench::register_layer_benchmarks();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
