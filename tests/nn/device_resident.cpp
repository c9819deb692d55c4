// Device-resident steps: after the first step, a MergedLinear's training and evaluation steps allocate nothing and
// copy nothing between memory spaces, with every built-in policy under both routers. Counted with Kokkos Tools'
// allocation and deep-copy callbacks (memory_events.hpp) over steady-state steps; fills of a view with one value
// are kernels and allowed. On a space whose memory the host can read, no copy at all is allowed. On a device, the
// only transfer allowed is the documented read-back (docs/layers.md, "What a step moves"): one copy to the host per
// layer step, or per model step where the model hands its layers one read-back batch, of at most 32 bytes per
// value it carries: the routing means' check, the policies' statuses and the noisy top-k gate's loss, whatever
// the mask (the TIES trim and DARE's L1 rescale read nothing back).
#include "camex/camex.hpp"

#include "memory_events.hpp"
#include "testing.hpp"

#include <functional>
#include <optional>
#include <random>

using namespace camex;
using namespace camex::testing;

namespace {

using T = float;
constexpr bool host_memory = Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename Space::memory_space>::accessible;
constexpr RoutingLayout segments{.sequences = 2, .length = 6, .granularity = Granularity::causal_segment, .segment = 3};
constexpr std::size_t experts = 4, width = 6;

MergeProblem problem(const TensorShape& shape) { return layer_problem(segments, experts, shape); }

/// The operands of one layer: tokens, expert and base weights and biases, their gradients, a workspace.
struct LayerTensors {
  Matrix<T, Space> ew, bw, eb, bb, d_ew, d_bw, d_eb, d_bb;
  LayerTensors(std::mt19937_64& gen, std::size_t base_rows)
      : ew(to_device<T>(random_matrix(experts, width * width, gen))),
        bw(to_device<T>(random_matrix(base_rows, width * width, gen))),
        eb(to_device<T>(random_matrix(experts, width, gen))),
        bb(to_device<T>(random_matrix(base_rows, width, gen))),
        d_ew("d_ew", experts, width * width), d_bw("d_bw", base_rows, width * width), d_eb("d_eb", experts, width),
        d_bb("d_bb", base_rows, width) {}
};

/// A chain of merged linear layers of width `width` (one, except for dynamic merging), run step after step.
template <class Layer>
class Stack {
 public:
  /// `batch`, where given, is the model's read-back batch for every layer of a step, read once per step.
  Stack(std::vector<Layer*> layers, std::vector<std::size_t> base_rows, bool biased, std::mt19937_64& gen,
        ReadBackBatch<Space>* batch = nullptr)
      : layers_(std::move(layers)), biased_(biased), batch_(batch) {
    const std::size_t tokens = segments.tokens();
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      tensors_.emplace_back(gen, base_rows[l]);
      workspaces_.push_back(make_workspace<Space>(layers_[l]->workspace_bytes()));
      activations_.emplace_back("activation", tokens, width);
      gradients_.emplace_back("gradient", tokens, width);
    }
    activations_.emplace_back("activation", tokens, width);
    gradients_.emplace_back("gradient", tokens, width);
    activations_[0] = to_device<T>(random_matrix(tokens, width, gen));
    gradients_.back() = to_device<T>(random_matrix(tokens, width, gen));
  }

  void step(std::uint64_t index, bool training) {
    const StepContext step{.seed = 7, .step = index, .stream = 0, .training = training, .read_backs = batch_};
    std::vector<double> aux(layers_.size());
    for (std::size_t l = 0; l < layers_.size(); ++l) {
      auto& t = tensors_[l];
      StepContext layer_step = step;
      layer_step.stream = static_cast<std::uint32_t>(3 * l);
      const auto bias = biased_ ? std::optional(ExpertTensors<T, Space>{t.eb, t.bb}) : std::nullopt;
      aux[l] = layers_[l]->forward(Space{}, layer_step, activations_[l], {}, {t.ew, t.bw}, bias, activations_[l + 1],
                                   workspaces_[l]);
    }
    if (batch_) batch_->read(Space{});
    if (!training) return;
    for (std::size_t l = layers_.size(); l-- > 0;) {
      auto& t = tensors_[l];
      const auto d_bias = biased_ ? std::optional(ExpertGradients<T, Space>{t.d_eb, t.d_bb}) : std::nullopt;
      layers_[l]->backward(Space{}, gradients_[l + 1], 1.0, gradients_[l], {t.d_ew, t.d_bw}, d_bias, workspaces_[l]);
    }
  }

  std::size_t layer_count() const { return layers_.size(); }

 private:
  std::vector<Layer*> layers_;
  bool biased_;
  ReadBackBatch<Space>* batch_;
  std::vector<LayerTensors> tensors_;
  std::vector<Workspace<Space>> workspaces_;
  std::vector<Matrix<T, Space>> activations_, gradients_;
};

/// Runs two warm-up steps, then records three training steps and one evaluation step; on a device, allows
/// `read_backs_per_step` copies to the host per step, each of at most `values_per_read_back` values.
template <class Layer>
void expect_resident(const std::string& what, Stack<Layer>& stack, std::size_t read_backs_per_step,
                     std::size_t values_per_read_back) {
  stack.step(1, true);
  stack.step(2, true);
  MemoryEvents events;
  constexpr std::size_t recorded_steps = 4;
  {
    const MemoryEventRecorder recorder(events);
    for (std::uint64_t s = 3; s < 6; ++s) stack.step(s, true);
    stack.step(6, false);
  }
  BOOST_TEST_CONTEXT(what << " on " << space_name) {
    BOOST_TEST(events.allocations.empty(), "allocations in steady-state steps:" << describe(events.allocations));
    BOOST_TEST(events.copies.empty(), "copies within a memory space:" << describe(events.copies));
    if constexpr (host_memory) {
      BOOST_TEST(events.transfers.empty(), "copies between memory spaces:" << describe(events.transfers));
    } else {
      const std::size_t allowed = read_backs_per_step * recorded_steps;
      BOOST_TEST(events.transfers.size() <= allowed, events.transfers.size() << " transfers, at most " << allowed
                                                                             << " allowed:" << describe(events.transfers));
      for (std::size_t i = 0; i < events.transfers.size(); ++i) {
        BOOST_TEST(events.transfer_to_host[i], "a copy to device memory: " << events.transfers[i]);
        BOOST_TEST(events.transfer_bytes[i] <= StepReadBacks::max_value_bytes * values_per_read_back,
                   "a read-back larger than " << values_per_read_back << " values: " << events.transfers[i]);
      }
    }
  }
}

/// Each built-in policy, weights and bias merged by it, in one MergedLinear under `router`.
template <class Policy, class Router>
void single_layer(const std::string& name, Router& router, const std::function<Policy(const TensorShape&)>& make,
                  std::size_t router_reads, std::mt19937_64& gen) {
  Policy weights = make({width, width}), bias = make({width, 1});
  MergedLinear layer(weights, &bias, router, segments);
  const std::size_t base_rows = weights.base_source() == BaseSource::parameter ? 1 : 0;
  Stack<decltype(layer)> stack({&layer}, {base_rows}, true, gen);
  expect_resident(name, stack, 1, router_reads + 3);
}

template <class Router>
void every_policy(const std::string& router_name, Router& router, std::size_t router_reads, std::mt19937_64& gen) {
  const auto named = [&](const char* policy) { return std::string(policy) + " under " + router_name; };
  single_layer<Euclidean<T, Space>>(named("Euclidean"), router, [](const TensorShape& s) { return Euclidean<T, Space>(problem(s)); }, router_reads, gen);
  single_layer<Domain<T, Space>>(named("SMEAR (no base)"), router, [](const TensorShape& s) { return Domain<T, Space>(problem(s), {.base = BaseSource::none}); }, router_reads, gen);
  single_layer<Domain<T, Space>>(named("Domain"), router, [](const TensorShape& s) { return Domain<T, Space>(problem(s), {.alpha = 0.5}); }, router_reads, gen);
  single_layer<CurvatureAware<T, Space>>(named("CurvatureAware"), router, [](const TensorShape& s) { return CurvatureAware<T, Space>(problem(s)); }, router_reads, gen);
  const TiesMask ties{.options = {.density = 0.5}, .election_weights = {1.0, 0.5, 2.0, 1.0}};
  single_layer<Ties<T, Space>>(named("Ties"), router, [&](const TensorShape& s) { return Ties<T, Space>(problem(s), ties); }, router_reads, gen);
  const TiesMask per_expert{.densities = {0.5, 0.75, 0.25, 1.0}};
  single_layer<Ties<T, Space>>(named("Ties (per-expert densities)"), router, [&](const TensorShape& s) { return Ties<T, Space>(problem(s), per_expert); }, router_reads, gen);
  single_layer<TiesCA<T, Space>>(named("TiesCA"), router, [&](const TensorShape& s) { return TiesCA<T, Space>(problem(s), ties); }, router_reads, gen);
  const DareMask dare{.drops = {0.1, 0.2, 0.3, 0.4}};
  single_layer<Dare<T, Space>>(named("Dare (per-expert drops)"), router, [&](const TensorShape& s) { return Dare<T, Space>(problem(s), dare); }, router_reads, gen);
  const DareMask l1{.drop = 0.3, .rescale = DareRescale::l1_norm};
  single_layer<Dare<T, Space>>(named("Dare (L1 rescale)"), router, [&](const TensorShape& s) { return Dare<T, Space>(problem(s), l1); }, router_reads, gen);
  const DareMask expert_level{.drop = 0.3, .granularity = DareGranularity::expert};
  single_layer<DareCA<T, Space>>(named("DareCA (expert drops)"), router, [&](const TensorShape& s) { return DareCA<T, Space>(problem(s), expert_level); }, router_reads, gen);
  single_layer<DareTies<T, Space>>(named("DareTies"), router, [&](const TensorShape& s) { return DareTies<T, Space>(problem(s), DareTiesMask{dare, ties}); }, router_reads, gen);

  DynamicChain<T, Space> chain(2, problem({width, width}));
  MergedLinear first(chain.layer(0), nullptr, router, segments), second(chain.layer(1), nullptr, router, segments);
  Stack<decltype(first)> stack({&first, &second}, {1, 0}, false, gen);
  expect_resident(named("DynamicChain (two layers)"), stack, 2, router_reads + 2);
  ReadBackBatch<Space> batch;
  Stack<decltype(first)> batched({&first, &second}, {1, 0}, false, gen, &batch);
  expect_resident(named("DynamicChain (two layers, one read-back batch)"), batched, 1, 2 * (router_reads + 2));
}

}  // namespace

BOOST_AUTO_TEST_CASE(steady_state_steps_allocate_nothing_and_copy_nothing) {
  std::mt19937_64 gen(test_seed());
  NoisyTopKGate<T, Space> gate(width, experts, segments, {.k = 2});
  every_policy("NoisyTopKGate", gate, 1, gen);
  SmearRouter<T, Space> smear(width, experts, segments, {.expert_dropout = 0.1});
  every_policy("SmearRouter", smear, 0, gen);
}
