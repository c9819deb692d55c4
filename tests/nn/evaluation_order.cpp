// The merged linear's two evaluation orders (docs/algorithms.md §9): the cost model picks applying every row and mixing only
// where groups hold a token or two; both orders give the same output and every gradient, for each kind of
// policy (no base, a base, a mask, a random score factor, the curvature transform); the apply-then-mix backward
// against central finite differences in double through per-token causal routing; error paths.
#include "camex/nn/merged_linear.hpp"

#include "camex/merge/curvature_aware.hpp"
#include "camex/merge/dare.hpp"
#include "camex/merge/domain.hpp"
#include "camex/merge/euclidean.hpp"
#include "camex/merge/ties.hpp"
#include "camex/route/noisy_top_k.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <cmath>
#include <limits>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

using PaddingFlags = Matrix<std::uint8_t, Space>;
using Gate = NoisyTopKGate<double, Space>;

constexpr std::size_t in = 4, out = 6, n = 3;
constexpr RoutingLayout segments{.sequences = 2, .length = 6, .granularity = Granularity::causal_segment, .segment = 3};
constexpr RoutingLayout per_token{.sequences = 2, .length = 4, .granularity = Granularity::causal_segment, .segment = 1};

/// A policy that only merges: a MergePolicy but not a RowCombinationPolicy.
template <class P>
struct MergeOnly {
  using scalar_type = typename P::scalar_type;
  using execution_space = typename P::execution_space;
  using In = ConstMatrix<scalar_type, execution_space>;
  using Out = Matrix<scalar_type, execution_space>;
  P& inner;
  const MergeProblem& problem() const { return inner.problem(); }
  std::size_t workspace_bytes() const { return inner.workspace_bytes(); }
  BaseSource base_source() const { return inner.base_source(); }
  void prepare(const execution_space& s, const StepContext& step, const In& e, const In& b, const Workspace<execution_space>& w) {
    inner.prepare(s, step, e, b, w);
  }
  void merge(const execution_space& s, const In& c, const Out& m, const Workspace<execution_space>& w) const {
    inner.merge(s, c, m, w);
  }
  void backward(const execution_space& s, const In& c, const In& dm, const Out& ds, const Out& de, const Out& db,
                const Workspace<execution_space>& w) {
    inner.backward(s, c, dm, ds, de, db, w);
  }
  auto parameters() { return inner.parameters(); }
};
static_assert(MergePolicy<MergeOnly<Domain<double, Space>>> && !RowCombinationPolicy<MergeOnly<Domain<double, Space>>>);

struct Operands {
  HostMatrix x, experts_w, base_w, experts_b, base_b;
};

Operands random_operands(const RoutingLayout& layout, std::mt19937_64& gen) {
  return {random_matrix(layout.tokens(), in, gen), random_matrix(n, out * in, gen), random_matrix(1, out * in, gen),
          random_matrix(n, out, gen), random_matrix(1, out, gen)};
}

/// y, the auxiliary loss, then d_x, the experts' and bases' gradients and every policy's and the router's
/// parameter gradients (each one row), from one forward and backward of `layer`.
struct Run {
  HostMatrix y;
  double aux = 0;
  std::vector<HostMatrix> gradients;
};

template <class Layer, class Policy>
Run run(Layer& layer, Policy& weights, Policy& bias, Gate& router, const Operands& o, const HostMatrix& d_y, bool with_base,
        const StepContext& step) {
  const auto ws = make_workspace<Space>(layer.workspace_bytes());
  const auto maybe = [&](const HostMatrix& m) { return with_base ? to_device<double>(m) : Matrix<double, Space>(); };
  const auto ew = to_device<double>(o.experts_w), eb = to_device<double>(o.experts_b);
  const auto bw = maybe(o.base_w), bb = maybe(o.base_b);
  Matrix<double, Space> y("y", o.x.rows(), out);
  Run r;
  r.aux = layer.forward(Space{}, step, to_device<double>(o.x), PaddingFlags(), {ew, bw}, ExpertTensors<double, Space>{eb, bb}, y, ws);
  r.y = to_host(y);
  Matrix<double, Space> d_x("d_x", o.x.rows(), in), d_ew("d_ew", n, out * in), d_eb("d_eb", n, out);
  const auto d_bw = with_base ? Matrix<double, Space>("d_bw", 1, out * in) : Matrix<double, Space>();
  const auto d_bb = with_base ? Matrix<double, Space>("d_bb", 1, out) : Matrix<double, Space>();
  layer.backward(Space{}, to_device<double>(d_y), 0.6, d_x, {d_ew, d_bw}, ExpertGradients<double, Space>{d_eb, d_bb}, ws);
  r.gradients = {to_host(d_x), to_host(d_ew), to_host(d_eb)};
  if (with_base) {
    r.gradients.push_back(to_host(d_bw));
    r.gradients.push_back(to_host(d_bb));
  }
  for (const auto& list : {weights.parameters(), bias.parameters(), router.parameters()})
    for (const auto& p : list) {
      const auto values = host_values(p.gradient);
      r.gradients.push_back(Eigen::Map<const HostMatrix>(values.data(), 1, static_cast<Eigen::Index>(values.size())));
    }
  return r;
}

/// Runs both orders with the same operands and compares everything they report.
template <class Policy>
void check_orders_agree(Policy& weights, Policy& bias, bool with_base, const RoutingLayout& layout, std::mt19937_64& gen) {
  Gate router(in, n, layout.groups(), {.k = 2, .balance_coefficient = 0.3, .init_std = 0.5}, 9);
  const Operands o = random_operands(layout, gen);
  const HostMatrix d_y = random_matrix(layout.tokens(), out, gen);
  const StepContext step{.seed = 5, .step = 4, .stream = 3, .training = true};
  MergedLinear merging(weights, &bias, router, layout, {.order = EvaluationOrder::merge_then_apply});
  MergedLinear applying(weights, &bias, router, layout, {.order = EvaluationOrder::apply_then_mix});
  BOOST_TEST((merging.order() == EvaluationOrder::merge_then_apply && applying.order() == EvaluationOrder::apply_then_mix));
  const Run a = run(merging, weights, bias, router, o, d_y, with_base, step);
  const Run b = run(applying, weights, bias, router, o, d_y, with_base, step);
  // Double: both orders sum the same O(1) products (n + 1 rows, I inputs, L tokens) in different orders.
  BOOST_TEST(a.y.cwiseAbs().maxCoeff() > 0.1);
  BOOST_TEST((b.y - a.y).cwiseAbs().maxCoeff() <= 1e-13 * (1 + a.y.cwiseAbs().maxCoeff()));
  BOOST_TEST(b.aux == a.aux);
  BOOST_TEST_REQUIRE(a.gradients.size() == b.gradients.size());
  for (std::size_t k = 0; k < a.gradients.size(); ++k)
    BOOST_TEST((b.gradients[k] - a.gradients[k]).cwiseAbs().maxCoeff() <= 1e-12 * (1 + a.gradients[k].cwiseAbs().maxCoeff()),
               "gradient " << k);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(evaluation_order)

// The GPT-2 c_fc shape with n = 7 + base: per-token routing (G = N) applies and mixes, segments of 4 tokens or
// more merge; a costlier memory (more flops per byte) moves the crossover to longer groups; forced orders stand.
BOOST_AUTO_TEST_CASE(cost_model_picks_by_group_length) {
  const auto shape = [](std::size_t group_length) {
    return AffineShape{.tokens = 4096, .groups = 4096 / group_length, .rows = 8, .outputs = 3072, .inputs = 768};
  };
  const EvaluationOptions automatic{};
  BOOST_TEST((choose_order(automatic, shape(1)) == EvaluationOrder::apply_then_mix));
  BOOST_TEST((choose_order(automatic, shape(2)) == EvaluationOrder::apply_then_mix));
  BOOST_TEST((choose_order(automatic, shape(4)) == EvaluationOrder::merge_then_apply));
  BOOST_TEST((choose_order(automatic, shape(256)) == EvaluationOrder::merge_then_apply));
  BOOST_TEST((choose_order({.flops_per_byte = 64}, shape(4)) == EvaluationOrder::apply_then_mix));
  BOOST_TEST((choose_order({.order = EvaluationOrder::apply_then_mix}, shape(256)) == EvaluationOrder::apply_then_mix));
  BOOST_TEST((choose_order({.order = EvaluationOrder::merge_then_apply}, shape(1)) == EvaluationOrder::merge_then_apply));
  // At one token per group the GEMM flops are equal-order (docs/algorithms.md §9: 2 (n + L) O I vs 2 L (n + 1) O I per group)
  // and merging adds a merged matrix of traffic per token.
  const auto merge = estimated_cost(EvaluationOrder::merge_then_apply, shape(1));
  const auto apply = estimated_cost(EvaluationOrder::apply_then_mix, shape(1));
  BOOST_TEST(merge.bytes > 10 * apply.bytes);
}

// At 4 inputs the mixing traffic (m O per token) is as large as a merged matrix (O I), so the layers here take a
// wider input.
BOOST_AUTO_TEST_CASE(layers_follow_the_cost_model) {
  CAMEX_TEST_CONTEXT() {
    constexpr std::size_t in = 32, out = 16;
    Domain<double, Space> weights({n, per_token.groups(), {out, in}}, {.alpha = 0.5});
    Gate router(in, n, per_token.groups());
    using Layer = MergedLinear<Domain<double, Space>, Gate>;
    BOOST_TEST((Layer(weights, nullptr, router, per_token).order() == EvaluationOrder::apply_then_mix));
    Domain<double, Space> long_groups({n, 2, {out, in}}, {.alpha = 0.5});
    const RoutingLayout sequences{.sequences = 2, .length = 64};
    Gate router2(in, n, 2);
    BOOST_TEST((Layer(long_groups, nullptr, router2, sequences).order() == EvaluationOrder::merge_then_apply));
    // A policy that only merges is merged, whatever the shape.
    MergeOnly<Domain<double, Space>> merge_only{weights};
    using OnlyMerging = MergedLinear<MergeOnly<Domain<double, Space>>, Gate>;
    BOOST_TEST((OnlyMerging(merge_only, nullptr, router, per_token).order() == EvaluationOrder::merge_then_apply));
  }
}

BOOST_AUTO_TEST_CASE(both_orders_give_the_same_output_and_gradients) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const RoutingLayout& layout : {segments, per_token})
      BOOST_TEST_CONTEXT("group length " << layout.group_length()) {
        const std::size_t g = layout.groups();
        const CurvatureOptions curvature{.rank = 2};
        { Euclidean<double, Space> w({n, g, {out, in}}), b({n, g, {out, 1}});
          BOOST_TEST_CONTEXT("euclidean") check_orders_agree(w, b, false, layout, gen); }
        { Domain<double, Space> w({n, g, {out, in}}, {.alpha = 0.6}), b({n, g, {out, 1}}, {.alpha = 0.6});
          BOOST_TEST_CONTEXT("domain") check_orders_agree(w, b, true, layout, gen); }
        { TiesCA<double, Space> w({n, g, {out, in}}, {.options = {.density = 0.5}}, curvature),
              b({n, g, {out, 1}}, {.options = {.density = 0.5}}, curvature);
          BOOST_TEST_CONTEXT("ties-ca") check_orders_agree(w, b, true, layout, gen); }
        { Dare<double, Space> w({n, g, {out, in}}, {.drop = 0.3, .granularity = DareGranularity::expert}),
              b({n, g, {out, 1}}, {.drop = 0.3, .granularity = DareGranularity::expert});
          BOOST_TEST_CONTEXT("dare, expert granularity") check_orders_agree(w, b, true, layout, gen); }
        { CurvatureAware<double, Space> w({n, g, {out, in}}, curvature, {.alpha = 0.8, .base = BaseSource::expert}),
              b({n, g, {out, 1}}, curvature, {.alpha = 0.8, .base = BaseSource::expert});
          BOOST_TEST_CONTEXT("curvature-aware, base from expert 0") check_orders_agree(w, b, false, layout, gen); }
      }
  }
}

// The outputs of each sequence's first segment are left out of the objective: that segment merges with gates whose
// gradient is stopped by design (see the merged linear's tests), so every other gradient entry is compared.
BOOST_AUTO_TEST_CASE(apply_then_mix_matches_finite_differences) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t g = per_token.groups();
    CurvatureAware<double, Space> weights({n, g, {out, in}}, {.rank = 2}), bias({n, g, {out, 1}}, {.rank = 2});
    Gate router(in, n, g, {.k = 2, .balance_coefficient = 0.3, .init_std = 0.5}, 3);
    MergedLinear layer(weights, &bias, router, per_token, {.order = EvaluationOrder::apply_then_mix});
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    Operands o = random_operands(per_token, gen);
    HostMatrix d_y = random_matrix(per_token.tokens(), out, gen);
    for (std::size_t t = 0; t < per_token.tokens(); t += per_token.length) d_y.row(static_cast<Eigen::Index>(t)).setZero();
    const StepContext step{.seed = 7, .step = 1, .stream = 0, .training = true};
    const auto objective = [&] {
      const auto ew = to_device<double>(o.experts_w), bw = to_device<double>(o.base_w);
      const auto eb = to_device<double>(o.experts_b), bb = to_device<double>(o.base_b);
      Matrix<double, Space> y("y", per_token.tokens(), out);
      const double aux = layer.forward(Space{}, step, to_device<double>(o.x), PaddingFlags(), {ew, bw}, ExpertTensors<double, Space>{eb, bb}, y, ws);
      return (to_host(y).array() * d_y.array()).sum() + 0.9 * aux;
    };
    objective();
    Matrix<double, Space> d_x("d_x", per_token.tokens(), in), d_ew("d_ew", n, out * in), d_bw("d_bw", 1, out * in),
        d_eb("d_eb", n, out), d_bb("d_bb", 1, out);
    layer.backward(Space{}, to_device<double>(d_y), 0.9, d_x, {d_ew, d_bw}, ExpertGradients<double, Space>{d_eb, d_bb}, ws);
    std::vector<Parameter<double, Space>> params;
    std::vector<std::vector<double>> param_grads;
    for (const auto& list : {weights.parameters(), bias.parameters(), router.parameters()})
      for (const auto& p : list) {
        params.push_back(p);
        param_grads.push_back(host_values(p.gradient));
      }
    GradientCheck check(objective);
    check.matrix(o.x, to_host(d_x));
    check.matrix(o.experts_w, to_host(d_ew));
    check.matrix(o.base_w, to_host(d_bw));
    check.matrix(o.experts_b, to_host(d_eb));
    check.matrix(o.base_b, to_host(d_bb));
    for (std::size_t k = 0; k < params.size(); ++k) check.parameter(params[k].value, param_grads[k]);
    // As the merged linear's check: truncation O(h^2) and rounding O(eps / h), about 1e-9; a factor of 100 spare.
    BOOST_TEST(check.worst() <= 1e-7 * std::max(1.0, check.scale()), "worst " << check.worst() << " of " << check.scale());
    BOOST_TEST(check.scale() > 1e-2);
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  CAMEX_TEST_CONTEXT() {
    Domain<double, Space> weights({n, per_token.groups(), {out, in}}, {.alpha = 0.5});
    MergeOnly<Domain<double, Space>> merge_only{weights};
    Gate router(in, n, per_token.groups());
    using OnlyMerging = MergedLinear<MergeOnly<Domain<double, Space>>, Gate>;
    require_argument_error([&] { OnlyMerging(merge_only, nullptr, router, per_token, {.order = EvaluationOrder::apply_then_mix}); },
                           "options.order", {"RowCombinationPolicy", "apply_then_mix"});
    using Layer = MergedLinear<Domain<double, Space>, Gate>;
    require_argument_error([&] { Layer(weights, nullptr, router, per_token, {.flops_per_byte = 0}); }, "options.flops_per_byte",
                           {"positive finite", "0"});
    require_argument_error(
        [&] { Layer(weights, nullptr, router, per_token, {.flops_per_byte = std::numeric_limits<double>::quiet_NaN()}); },
        "options.flops_per_byte", {"nan"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
