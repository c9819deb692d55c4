// One training step (forward + backward) of a merged linear at GPT-2's c_fc: 768 -> 3072 with bias, n = 7 experts
// + base, TIES-CA (density 0.2, rank 8), the CAMEx GPT-2 router (noisy, k = n, aux coefficient 1e-5), 4 sequences
// of 1024 tokens routed by causal segments of 256 (G = 16 groups). benchmarks/torch/ops.py runs the same layer math
// under the same name with autograd.
//
// Work per step (written down before optimising; docs/performance.md):
//   GEMMs        6 N O I                              = 58.0 GFLOP   (y, dL/dW_g, dL/dx)
//   curvature    3 x 2 r n P (o1 + o2 + i1 + i2)      = 133 GFLOP    (forward, and the backward's data and factor
//                                                                      contractions, about twice the forward)
//   merges       3 x 2 G (n + 1) P                    = 1.8 GFLOP    (memory-bound: G merged matrices written, read)
// at the native SGEMM rate (~300 GFLOP/s on 2 cores) about 0.65 s; PyTorch runs the curvature as einsums through
// the system BLAS, ~2.3 s forward alone in the policy benchmarks.
//
// Where the time goes is measured inside the same timed steps: Kokkos Tools callbacks time every kernel and sum
// them by what the label says it is (counters ms_gemm; ms_curvature for the mode products of the transform and of
// its backward, ms_curvature_factor_grad for the factor gradients' contractions; ms_ties_mask, ms_merge,
// ms_router, and ms_other for the rest, including host work between kernels). Host kernels run synchronously, so their
// begin-to-end time is their run time; on a device space the split would need a fence per kernel and is not
// reported.
#include "cases.hpp"

#include <camex/camex.hpp>

#include <benchmark/benchmark.h>

#include <array>
#include <optional>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <unordered_map>

namespace camex::bench {
namespace {

using Space = Kokkos::DefaultExecutionSpace;
using T = float;
using View = Kokkos::View<T**, Kokkos::LayoutRight, Space::memory_space>;
constexpr bool host_space = Kokkos::SpaceAccessibility<Space, Kokkos::HostSpace>::accessible;

/// The categories of the breakdown, by the prefix of a kernel's label (first match wins; the rest is "other").
constexpr std::array<std::pair<std::string_view, std::string_view>, 13> categories{{
    {"camex::gemm", "gemm"},
    {"camex::mode_product", "curvature"},
    {"camex::mode_contraction", "curvature_factor_grad"},
    {"camex::top_k", "ties_mask"},
    {"camex::ties_mask", "ties_mask"},
    {"camex::TiesMask", "ties_mask"},
    {"camex::row_combination", "merge"},
    {"camex::soft_merge", "merge"},
    {"camex::materialise_rows", "merge"},
    {"camex::MergedAffine", "merge"},
    {"camex::NoisyTopKGate", "router"},
    {"camex::routing_inputs", "router"},
    {"camex::merge_scores", "router"},
}};

/// Sums the wall time of every Kokkos kernel by category while alive (one at a time: the callbacks are global).
class KernelClock {
 public:
  KernelClock() {
    namespace tools = Kokkos::Tools::Experimental;
    active_ = this;
    tools::set_begin_parallel_for_callback(&begin);
    tools::set_begin_parallel_reduce_callback(&begin);
    tools::set_begin_parallel_scan_callback(&begin);
    tools::set_end_parallel_for_callback(&end);
    tools::set_end_parallel_reduce_callback(&end);
    tools::set_end_parallel_scan_callback(&end);
  }
  ~KernelClock() {
    namespace tools = Kokkos::Tools::Experimental;
    tools::set_begin_parallel_for_callback(nullptr);
    tools::set_begin_parallel_reduce_callback(nullptr);
    tools::set_begin_parallel_scan_callback(nullptr);
    tools::set_end_parallel_for_callback(nullptr);
    tools::set_end_parallel_reduce_callback(nullptr);
    tools::set_end_parallel_scan_callback(nullptr);
    active_ = nullptr;
  }
  KernelClock(const KernelClock&) = delete;
  KernelClock& operator=(const KernelClock&) = delete;

  void reset() { seconds_.clear(); }
  double seconds(std::string_view category) const {
    const auto it = seconds_.find(std::string(category));
    return it == seconds_.end() ? 0.0 : it->second;
  }

 private:
  using Clock = std::chrono::steady_clock;
  static void begin(const char* label, std::uint32_t, std::uint64_t* id) {
    auto& self = *active_;
    std::string_view category = "other";
    for (const auto& [prefix, name] : categories)
      if (std::string_view(label).starts_with(prefix)) {
        category = name;
        break;
      }
    *id = self.next_id_++;
    self.running_[*id] = {std::string(category), Clock::now()};
  }
  static void end(std::uint64_t id) {
    auto& self = *active_;
    const auto it = self.running_.find(id);
    self.seconds_[it->second.first] += std::chrono::duration<double>(Clock::now() - it->second.second).count();
    self.running_.erase(it);
  }

  static inline KernelClock* active_ = nullptr;
  std::uint64_t next_id_ = 0;
  std::unordered_map<std::uint64_t, std::pair<std::string, Clock::time_point>> running_;
  std::unordered_map<std::string, double> seconds_;
};

void fill(const View& m, std::uint32_t tensor, T lo, T hi) { fill_uniform(Space{}, m, CounterRng(2025, 2), tensor, lo, hi); }

struct LayerShape {
  std::size_t sequences = 4, length = 1024, segment = 256, inputs = 768, outputs = 3072, experts = 7, rank = 8;
  EvaluationOrder order = EvaluationOrder::automatic;
};

/// TIES-CA with perturbed factors (the case), or Domain(0.5): no transform, so the evaluation order is
/// what the time depends on.
template <class Policy>
Policy make_policy(const LayerShape& s, const RoutingLayout& layout, std::size_t cols) {
  const MergeProblem problem = layer_problem(layout, s.experts, {s.outputs, cols});
  if constexpr (std::is_same_v<Policy, TiesCA<T, Space>>) {
    Policy policy(problem, {}, {.rank = s.rank});
    perturb_factors(policy);
    return policy;
  } else {
    return Policy(problem, {.alpha = 0.5});
  }
}

template <class Policy>
void merged_linear_step(benchmark::State& state, const LayerShape& s) {
  const RoutingLayout layout{.sequences = s.sequences, .length = s.length, .granularity = Granularity::causal_segment,
                             .segment = s.segment};
  const std::size_t n = s.experts, groups = layout.groups(), tokens = layout.tokens();
  const std::size_t params = s.outputs * s.inputs;
  Policy weights = make_policy<Policy>(s, layout, s.inputs), bias = make_policy<Policy>(s, layout, 1);
  NoisyTopKGate<T, Space> router(s.inputs, n, layout, {.balance_coefficient = 1e-5}, 1);
  MergedLinear layer(weights, &bias, router, layout, {.order = s.order});
  View x("x", tokens, s.inputs), y("y", tokens, s.outputs), d_y("d_y", tokens, s.outputs), d_x("d_x", tokens, s.inputs);
  View ew("experts_w", n, params), bw("base_w", 1, params), eb("experts_b", n, s.outputs), bb("base_b", 1, s.outputs);
  View d_ew("d_experts_w", n, params), d_bw("d_base_w", 1, params), d_eb("d_experts_b", n, s.outputs),
      d_bb("d_base_b", 1, s.outputs);
  fill(x, 1, -1, 1);
  fill(d_y, 2, -1, 1);
  fill(ew, 3, -1, 1);
  fill(bw, 4, -1, 1);
  fill(eb, 5, -1, 1);
  fill(bb, 6, -1, 1);
  for (const View& v : {y, d_x, d_ew, d_bw, d_eb, d_bb}) fill(v, 7, 0, 0);
  const auto workspace = make_workspace<Space>(layer.workspace_bytes());
  Space().fence();

  std::uint64_t iteration = 0;
  const auto step = [&] {
    const StepContext context{.seed = 2025, .step = iteration++, .stream = 0, .training = true};
    layer.forward(Space{}, context, x, {}, {ew, bw}, ExpertTensors<T, Space>{eb, bb}, y, workspace);
    layer.backward(Space{}, d_y, 1.0, d_x, {d_ew, d_bw}, ExpertGradients<T, Space>{d_eb, d_bb}, workspace);
    Space().fence();
  };
  step();  // first touch of the workspace
  std::optional<KernelClock> clock;
  if constexpr (host_space) clock.emplace();
  double total = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  const auto [o1, o2] = nearest_factors(s.outputs);
  const auto [i1, i2] = nearest_factors(s.inputs);
  const double transform = std::is_same_v<Policy, TiesCA<T, Space>>
                               ? 2.0 * s.rank * n * params * static_cast<double>(o1 + o2 + i1 + i2) +
                                     2.0 * s.rank * n * s.outputs * static_cast<double>(o1 + o2)
                               : 0.0;
  // The merge-then-apply count (docs/algorithms.md §9: the cheaper order's work whichever order runs).
  state.counters["flops"] = 6.0 * tokens * params + 3 * transform + 3 * 2.0 * groups * (n + 1) * (params + s.outputs);
  // Minimum traffic: experts and bases read and their gradients written, x and d_y read, y and d_x written.
  const double each_way = 4.0 * ((n + 1) * (params + s.outputs) + tokens * (s.inputs + s.outputs));
  traffic(state, each_way, each_way);
  if (!clock) return;
  const double steps = static_cast<double>(state.iterations());
  double accounted = 0;
  for (const std::string_view category : {"gemm", "curvature", "curvature_factor_grad", "ties_mask", "merge", "router"}) {
    const double seconds = clock->seconds(category);
    accounted += seconds;
    state.counters["ms_" + std::string(category)] = 1e3 * seconds / steps;
  }
  state.counters["ms_other"] = 1e3 * (total - accounted) / steps;
}

}  // namespace

void register_layer_benchmarks() {
  const LayerShape gpt2{};
  timed(benchmark::RegisterBenchmark("merged_linear/768to3072/n=7/ties_ca/tokens=4x1024/T=256/r=8",
                                     [=](benchmark::State& state) { merged_linear_step<TiesCA<T, Space>>(state, gpt2); }));
  // Per-token routing (segments of one token, G = N = 64): the two evaluation orders of the same layer, the
  // automatic choice being apply-then-mix (tests/nn/evaluation_order.cpp).
  for (const auto& [order, label] : {std::pair{EvaluationOrder::merge_then_apply, "merge_then_apply"},
                                     std::pair{EvaluationOrder::apply_then_mix, "apply_then_mix"}}) {
    const LayerShape per_token{.sequences = 1, .length = 64, .segment = 1, .order = order};
    timed(benchmark::RegisterBenchmark(("merged_linear/768to3072/n=7/domain/tokens=1x64/T=1/" + std::string(label)).c_str(),
                                       [=](benchmark::State& state) { merged_linear_step<Domain<T, Space>>(state, per_token); }));
  }
}

}  // namespace camex::bench
