// One training step of each merge policy: prepare (masks, transform) then the merge of B routing groups, at
// N = 8 experts + base of P = 2^22 parameters (B = 1, a one-shot merge) and at GPT-2's MLP shapes (768 x 3072 and
// 3072 x 768, n = 7 experts + base, B in {1, 8, 32}). Case names start with the policy; benchmarks/torch/ops.py
// runs the same math in PyTorch under the same names. A case is an evaluation step (prepare + merge, as in
// serving), except DARE's, whose mask is drawn only in training (a training step's forward), and the cases ending
// in /backward: a whole training step, prepare + merge + backward, where prepare also materialises the rows the
// backward reads.
// Counters: "bytes" is the minimum traffic of a step (experts and base read once, merged written once, fp32);
// "flops" counts the merge (2 B (n + 1) P) and, for curvature, the transform (2 r n P (o1 + o2 + i1 + i2)).
#include "cases.hpp"

#include <camex/camex.hpp>

#include <benchmark/benchmark.h>

#include <functional>
#include <memory>
#include <string>

namespace camex::bench {
namespace {

using Space = Kokkos::DefaultExecutionSpace;
using T = float;

struct Shape {
  std::string label;
  TensorShape tensor;
  std::size_t experts;  // n, the base not counted
};

/// Uniform inputs from the counter-based generator, first touched by the threads that use them.
void fill(const Kokkos::View<T**, Kokkos::LayoutRight, Space::memory_space>& m, std::uint32_t tensor, T lo, T hi) {
  fill_uniform(Space{}, m, CounterRng(2025, 1), tensor, lo, hi);
}

double transform_flops(const Shape& s, std::size_t rank) {
  const auto [o1, o2] = nearest_factors(s.tensor.rows);
  const auto [i1, i2] = nearest_factors(s.tensor.cols);
  const auto counted = [](std::size_t e) { return e > 1 ? e : 0; };
  return 2.0 * rank * s.experts * s.tensor.params() * (counted(o1) + counted(o2) + counted(i1) + counted(i2));
}

/// What a case times.
enum class Timed {
  evaluation,        ///< prepare + merge, StepContext::training false
  training_forward,  ///< prepare + merge of a training step: what draws DARE's mask
  training_step,     ///< prepare + merge + backward of a training step
};

/// Times one step of any MergePolicy; `with_base` says whether the policy reads a base row.
template <class Policy>
void step(benchmark::State& state, Policy& policy, const Shape& s, std::size_t groups, bool with_base,
          double extra_flops, Timed timed_part) {
  const std::size_t params = s.tensor.params(), n = s.experts;
  const bool with_backward = timed_part == Timed::training_step, training = timed_part != Timed::evaluation;
  Kokkos::View<T**, Kokkos::LayoutRight, Space::memory_space> experts("experts", n, params),
      base("base", with_base ? 1 : 0, params), scores("scores", groups, n), merged("merged", groups, params);
  Kokkos::View<T**, Kokkos::LayoutRight, Space::memory_space> d_merged("d_merged", with_backward ? groups : 0, params),
      d_scores("d_scores", groups, n), d_experts("d_experts", with_backward ? n : 0, params),
      d_base("d_base", with_base && with_backward ? 1 : 0, params);
  fill(experts, 1, -1, 1);
  if (with_base) fill(base, 2, -1, 1);
  fill(scores, 3, 0, 1);
  fill(merged, 4, 0, 0);
  if (with_backward) {
    fill(d_merged, 5, -1, 1);
    fill(d_experts, 6, 0, 0);
    if (with_base) fill(d_base, 7, 0, 0);
  }
  Space().fence();
  MergeDriver<Policy> driver(policy);
  std::uint64_t iteration = 0;
  const auto one_step = [&] {
    driver.prepare(Space{}, StepContext{.seed = 2025, .step = iteration++, .stream = 0, .training = training}, experts, base);
    driver.merge(Space{}, scores, merged);
    if (with_backward) driver.backward(Space{}, scores, d_merged, d_scores, d_experts, d_base);
    Space().fence();
  };
  // The workspace is allocated uninitialised, so the first step takes its page faults (up to 1 s for the
  // 0.4 GB of rows at N = 8 on this VM): a cost of the first step, not of a step, and untimed here as in a trainer.
  one_step();
  for (auto _ : state) one_step();
  const double rows = n + (with_base ? 1 : 0);
  // The merge reads the rows and writes the merged; the backward adds d_merged read and d_experts, d_base written;
  // its flops are d_R = C^T d_merged and d_C = d_merged R^T.
  traffic(state, 4.0 * (rows + (with_backward ? groups : 0)) * params, 4.0 * (groups + (with_backward ? rows : 0)) * params);
  state.counters["flops"] = 2.0 * groups * rows * params * (with_backward ? 3 : 1) + extra_flops;
}

template <class Make>
void add(const std::string& name, const Shape& s, std::size_t groups, bool with_base, double extra_flops, Make make,
         Timed timed_part = Timed::evaluation) {
  timed(benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& state) {
    auto policy = make(MergeProblem{.experts = s.experts, .groups = groups, .shape = s.tensor});
    step(state, *policy, s, groups, with_base, extra_flops, timed_part);
  }));
}

/// Two layers of dynamic merging: layer 0 from the base, layer 1 from the propagated base.
void dynamic_step(benchmark::State& state, const Shape& s, std::size_t groups) {
  const std::size_t params = s.tensor.params(), n = s.experts;
  DynamicChain<T, Space> chain(2, MergeProblem{.experts = n, .groups = groups, .shape = s.tensor});
  Kokkos::View<T**, Kokkos::LayoutRight, Space::memory_space> experts0("experts0", n, params), experts1("experts1", n, params),
      base("base", 1, params), none("none", 0, params), scores("scores", groups, n), merged0("merged0", groups, params),
      merged1("merged1", groups, params);
  fill(experts0, 1, -1, 1);
  fill(experts1, 5, -1, 1);
  fill(base, 2, -1, 1);
  fill(scores, 3, 0, 1);
  perturb_factors(chain.layer(0));
  perturb_factors(chain.layer(1));
  MergeDriver<DynamicChain<T, Space>::Layer> first(chain.layer(0)), second(chain.layer(1));
  Space().fence();
  std::uint64_t iteration = 0;
  const auto one_step = [&] {
    const StepContext step{.seed = 2025, .step = iteration++, .stream = 0, .training = true};
    first.prepare(Space{}, step, experts0, base);
    first.merge(Space{}, scores, merged0);
    second.prepare(Space{}, StepContext{step.seed, step.step, 1, true}, experts1, none);
    second.merge(Space{}, scores, merged1);
    Space().fence();
  };
  one_step();  // the workspaces' first touch, as in step()
  for (auto _ : state) one_step();
  traffic(state, 4.0 * (2 * n + 1) * params, 4.0 * 2 * groups * params);  // both layers' experts and the base; two merges
  state.counters["flops"] = 2 * (2.0 * groups * (n + 1) * params + transform_flops(s, 8));
}

}  // namespace

void register_policy_benchmarks() {
  using std::make_unique;
  const Shape wide{"N=8/P=4194304", {2048, 2048}, 8};
  const Shape gpt2[] = {{"768x3072/n=7", {768, 3072}, 7}, {"3072x768/n=7", {3072, 768}, 7}};
  const MergeOptions half{.alpha = 0.5};  // alpha = 1 with scores summing to 1 would be the degenerate base

  struct Case {
    Shape shape;
    std::size_t groups;
  };
  std::vector<Case> cases{{wide, 1}};
  for (const auto& s : gpt2)
    for (std::size_t b : {1, 8, 32}) cases.push_back({s, b});

  for (const auto& [s, b] : cases) {
    const std::string at = "/" + s.label + "/B=" + std::to_string(b);
    add("euclidean" + at, Shape{s.label, s.tensor, s.experts + 1}, b, false, 0,
        [](const MergeProblem& p) { return make_unique<Euclidean<T, Space>>(p); });
    add("domain" + at, s, b, true, 0, [=](const MergeProblem& p) { return make_unique<Domain<T, Space>>(p, half); });
    const auto ties = [](const MergeProblem& p) { return make_unique<Ties<T, Space>>(p, TiesMask{.options = {.density = 0.2}}); };
    const auto dare = [](const MergeProblem& p) { return make_unique<Dare<T, Space>>(p, DareMask{.drop = 0.1}); };
    add("ties" + at + "/density=0.2", s, b, true, 0, ties);
    add("dare" + at + "/p=0.1", s, b, true, 0, dare, Timed::training_forward);
    if (b <= 8) {
      add("euclidean" + at + "/backward", Shape{s.label, s.tensor, s.experts + 1}, b, false, 0,
          [](const MergeProblem& p) { return make_unique<Euclidean<T, Space>>(p); }, Timed::training_step);
      add("domain" + at + "/backward", s, b, true, 0,
          [=](const MergeProblem& p) { return make_unique<Domain<T, Space>>(p, half); }, Timed::training_step);
      add("ties" + at + "/density=0.2/backward", s, b, true, 0, ties, Timed::training_step);
      add("dare" + at + "/p=0.1/backward", s, b, true, 0, dare, Timed::training_step);
    }
    if (s.label == wide.label) continue;  // curvature at GPT-2 shapes only (spec: 4-factor Kronecker per layer)
    const double transform = transform_flops(s, 8);
    add("curvature_aware" + at + "/r=8", s, b, true, transform, [](const MergeProblem& p) {
      auto policy = make_unique<CurvatureAware<T, Space>>(p);
      perturb_factors(*policy);
      return policy;
    });
    add("ties_ca" + at + "/density=0.2/r=8", s, b, true, transform, [](const MergeProblem& p) {
      auto policy = make_unique<TiesCA<T, Space>>(p, TiesMask{.options = {.density = 0.2}});
      perturb_factors(*policy);
      return policy;
    });
    add("dare_ca" + at + "/p=0.1/r=8", s, b, true, transform, [](const MergeProblem& p) {
      auto policy = make_unique<DareCA<T, Space>>(p);
      perturb_factors(*policy);
      return policy;
    }, Timed::training_forward);
    timed(benchmark::RegisterBenchmark(("dynamic" + at + "/layers=2/r=8").c_str(), [=](benchmark::State& state) {
      dynamic_step(state, s, b);
    }));
  }
}

}  // namespace camex::bench
