// The merged linear layer: forward against a double reference (Domain merge of weights and biases with the
// router's scores, applied per group of tokens); an upcycled layer at step 0 is the dense layer; every gradient
// (tokens, expert weights and biases, bases, router and curvature parameters) against central finite differences
// in double, through causal segment routing and the noisy top-k gate; error paths.
#include "camex/nn/merged_linear.hpp"

#include "camex/merge/curvature_aware.hpp"
#include "camex/merge/domain.hpp"
#include "camex/route/noisy_top_k.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

using PaddingFlags = Matrix<std::uint8_t, Space>;

// The layer's declared draw streams: the weights' policy's, the bias's (bias or not), the router's.
static_assert(MergedLinear<Domain<double, Space>, NoisyTopKGate<double, Space>>::random_streams == 3);

constexpr RoutingLayout segments{.sequences = 2, .length = 6, .granularity = Granularity::causal_segment, .segment = 3};

struct Tensors {
  HostMatrix x, experts_w, base_w, experts_b, base_b;
};

Tensors random_tensors(std::size_t tokens, std::size_t in, std::size_t out, std::size_t n, std::mt19937_64& gen) {
  return {random_matrix(tokens, in, gen), random_matrix(n, out * in, gen), random_matrix(1, out * in, gen),
          random_matrix(n, out, gen), random_matrix(1, out, gen)};
}

/// Runs one forward of `layer`; returns y and the auxiliary loss.
template <class Layer>
std::pair<HostMatrix, double> run(Layer& layer, const StepContext& step, const Tensors& t, const Workspace<Space>& ws) {
  using T = typename Layer::scalar_type;
  const auto x = to_device<T>(t.x), ew = to_device<T>(t.experts_w), bw = to_device<T>(t.base_w);
  const auto eb = to_device<T>(t.experts_b), bb = to_device<T>(t.base_b);
  Matrix<T, Space> y("y", t.x.rows(), layer.outputs());
  const double aux = layer.forward(Space{}, step, x, PaddingFlags(), {ew, bw}, ExpertTensors<T, Space>{eb, bb}, y, ws);
  return {to_host(y), aux};
}

/// Zeroes the rows of tokens in a segment 0 (causal segments; nothing for sequences): an objective over the other
/// outputs has no detached path, so finite differences see every gradient.
HostMatrix outside_segment_0(const RoutingLayout& layout, HostMatrix d_y) {
  if (layout.granularity == Granularity::causal_segment)
    for (std::size_t t = 0; t < layout.tokens(); ++t)
      if (t % layout.length < layout.segment) d_y.row(static_cast<Eigen::Index>(t)).setZero();
  return d_y;
}

struct Gradients {
  HostMatrix x, experts_w, base_w, experts_b, base_b;
};

/// Runs the backward of `layer`'s last forward (with its workspace); returns every tensor's gradient.
template <class Layer>
Gradients backward(Layer& layer, const HostMatrix& d_y, double d_aux, const Tensors& t, const Workspace<Space>& ws) {
  const auto tokens = static_cast<std::size_t>(t.x.rows()), n = static_cast<std::size_t>(t.experts_w.rows());
  const std::size_t in = layer.inputs(), out = layer.outputs();
  Matrix<double, Space> d_x("d_x", tokens, in), d_ew("d_ew", n, out * in), d_bw("d_bw", 1, out * in),
      d_eb("d_eb", n, out), d_bb("d_bb", 1, out);
  layer.backward(Space{}, to_device<double>(d_y), d_aux, d_x, {d_ew, d_bw}, ExpertGradients<double, Space>{d_eb, d_bb}, ws);
  return {to_host(d_x), to_host(d_ew), to_host(d_bw), to_host(d_eb), to_host(d_bb)};
}

/// Every policy and router parameter, in one list.
template <class Weights, class Router>
std::vector<Parameter<double, Space>> parameters_of(Weights& weights, Weights& bias, const Router& router) {
  std::vector<Parameter<double, Space>> params;
  for (const auto& list : {weights.parameters(), bias.parameters(), router.parameters()})
    for (const auto& p : list) params.push_back(p);
  return params;
}

void perturb(const std::vector<Parameter<double, Space>>& params, std::mt19937_64& gen, double size) {
  std::uniform_real_distribution<double> u(-size, size);
  for (const auto& p : params) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, p.value);
    for (std::size_t k = 0; k < host.extent(0); ++k) host(k) += u(gen);
    Kokkos::deep_copy(p.value, host);
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(merged_linear)

BOOST_AUTO_TEST_CASE(forward_is_the_merged_matrix_applied_per_group) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t in = 5, out = 7, n = 3, groups = segments.groups();
    const MergeOptions half{.alpha = 0.5};
    Domain<double, Space> weights({n, groups, {out, in}}, half), bias({n, groups, {out, 1}}, half);
    NoisyTopKGate<double, Space> router(in, n, groups, {.init_std = 0.5}, 1);
    MergedLinear layer(weights, &bias, router, segments);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    const Tensors t = random_tensors(segments.tokens(), in, out, n, gen);
    const StepContext step{.seed = 4, .step = 2, .stream = 6, .training = true};
    const auto [y, aux] = run(layer, step, t, ws);

    // The router on its own, on every segment's own mean (per_segment gate rows), with the id the layer gives
    // it; segment s merges with row s - 1, segment 0 with its own.
    Matrix<double, Space> routed("routed", groups, in), gates("gates", groups, n);
    routing_inputs(Space{}, segments, to_device<double>(t.x), PaddingFlags(), routed);
    auto ws_router = make_workspace<Space>(router.workspace_bytes());
    const double aux_expected = router.forward(Space{}, StepContext{4, 2, 8, true}, routed, gates, ws_router);
    const HostMatrix rows = to_host(gates);
    HostMatrix s(groups, n);
    for (std::size_t g = 0; g < groups; ++g) s.row(g) = rows.row(g % segments.segments() == 0 ? g : g - 1);
    HostMatrix expected(y.rows(), y.cols());
    for (std::size_t g = 0; g < groups; ++g) {
      HostMatrix w = t.base_w, b = t.base_b;
      for (std::size_t i = 0; i < n; ++i) {
        w += 0.5 * s(g, i) * (t.experts_w.row(i) - t.base_w);
        b += 0.5 * s(g, i) * (t.experts_b.row(i) - t.base_b);
      }
      const HostMatrix W = Eigen::Map<const HostMatrix>(w.data(), out, in);
      for (std::size_t q = 0; q < segments.group_length(); ++q) {
        const Eigen::Index token = g * segments.group_length() + q;
        expected.row(token) = (W * t.x.row(token).transpose()).transpose() + b;
      }
    }
    // Double: sums of n + 1 and I terms of size <= 4; a few hundred roundings of unit size at most.
    BOOST_TEST((y - expected).cwiseAbs().maxCoeff() <= 1e-13);
    BOOST_TEST(aux == aux_expected);
  }
}

// algorithms.md §10: experts upcycled from a dense layer (all equal to the base) give the dense layer's output, whatever
// the router says.
BOOST_AUTO_TEST_CASE(upcycled_layer_is_the_dense_layer) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t in = 4, out = 6, n = 3, groups = segments.groups();
    CurvatureAware<float, Space> weights({n, groups, {out, in}}, {.rank = 2}), bias({n, groups, {out, 1}}, {.rank = 2});
    NoisyTopKGate<float, Space> router(in, n, groups, {.init_std = 0.5}, 2);
    MergedLinear layer(weights, &bias, router, segments);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    Tensors t = random_tensors(segments.tokens(), in, out, n, gen);
    t.base_w = rounded<float>(t.base_w);
    t.base_b = rounded<float>(t.base_b);
    t.x = rounded<float>(t.x);
    t.experts_w = t.base_w.replicate(n, 1);
    t.experts_b = t.base_b.replicate(n, 1);
    const auto [y, aux] = run(layer, StepContext{.seed = 1}, t, ws);
    const HostMatrix W = Eigen::Map<const HostMatrix>(t.base_w.data(), out, in);
    const HostMatrix dense = (t.x * W.transpose()).rowwise() + t.base_b.row(0);
    // Float: the merge returns the base exactly (every delta is 0); the product sums I = 4 terms.
    BOOST_TEST((y - dense).cwiseAbs().maxCoeff() <= 8 * unit_roundoff<float> * (t.x.cwiseAbs() * W.cwiseAbs().transpose()).maxCoeff() + 8 * unit_roundoff<float>);
  }
}

// Per sequence every output is in the objective; with causal segments the outputs of segment 0, whose merge is
// detached from its gates by design, are left out (the next test pins what they send), so every entry of every
// gradient is compared.
BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  std::mt19937_64 gen(test_seed());
  const RoutingLayout per_sequence{.sequences = 3, .length = 4};
  RoutingLayout per_group = segments;
  per_group.gate_rows = GateRows::per_group;
  for (const RoutingLayout& layout : {per_sequence, segments, per_group})
  BOOST_TEST_CONTEXT("groups " << layout.groups() << (layout.granularity == Granularity::sequence ? " (sequences)" : " (segments)")
                               << (layout.gate_rows == GateRows::per_group ? ", per_group gate rows" : ""))
  CAMEX_TEST_CONTEXT() {
    const std::size_t in = 4, out = 6, n = 3, groups = layout.groups();
    CurvatureAware<double, Space> weights({n, groups, {out, in}}, {.rank = 2}), bias({n, groups, {out, 1}}, {.rank = 2});
    NoisyTopKGate<double, Space> router(in, n, groups, {.k = 2, .balance_coefficient = 0.3, .init_std = 0.5}, 3);
    perturb(weights.parameters(), gen, 0.2);
    perturb(bias.parameters(), gen, 0.2);
    MergedLinear layer(weights, &bias, router, layout);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    Tensors t = random_tensors(layout.tokens(), in, out, n, gen);
    const HostMatrix d_y = outside_segment_0(layout, random_matrix(layout.tokens(), out, gen));
    // per_group gate rows also detach segment 0's own routing mean, which the balancing loss reads.
    const double d_aux = layout.gate_rows == GateRows::per_group ? 0.0 : 0.9;
    const StepContext step{.seed = 7, .step = 1, .stream = 0, .training = true};
    const auto objective = [&] {
      const auto [y, aux] = run(layer, step, t, ws);
      return (y.array() * d_y.array()).sum() + d_aux * aux;
    };

    objective();  // the forward the backward below differentiates
    const Gradients g = backward(layer, d_y, d_aux, t, ws);
    const auto params = parameters_of(weights, bias, router);
    std::vector<std::vector<double>> param_grads;
    for (const auto& p : params) param_grads.push_back(host_values(p.gradient));

    GradientCheck check(objective);
    check.matrix(t.x, g.x);
    check.matrix(t.experts_w, g.experts_w);
    check.matrix(t.base_w, g.base_w);
    check.matrix(t.experts_b, g.experts_b);
    check.matrix(t.base_b, g.base_b);
    for (std::size_t which = 0; which < params.size(); ++which) check.parameter(params[which].value, param_grads[which]);
    const double worst = check.worst(), scale = check.scale();
    BOOST_TEST(worst <= 1e-7 * std::max(1.0, scale), "worst " << worst << " of gradients up to " << scale);
    BOOST_TEST(scale > 1e-2);
  }
}

// algorithms.md §2.3: segment 0 merges with gates whose gradient is stopped, so its outputs alone send exactly nothing to
// the router's parameters, under both gate-row conventions and with one segment per sequence.
BOOST_AUTO_TEST_CASE(segment_0_outputs_do_not_train_the_router) {
  std::mt19937_64 gen(test_seed());
  const RoutingLayout one_segment{.sequences = 2, .length = 3, .granularity = Granularity::causal_segment, .segment = 3};
  for (RoutingLayout layout : {segments, one_segment})
    for (const GateRows rows : {GateRows::per_segment, GateRows::per_group}) {
      layout.gate_rows = rows;
      BOOST_TEST_CONTEXT("segments " << layout.segments() << ", per_group " << (rows == GateRows::per_group))
      CAMEX_TEST_CONTEXT() {
        const std::size_t in = 4, out = 5, n = 3, groups = layout.groups();
        CurvatureAware<double, Space> weights({n, groups, {out, in}}, {.rank = 2}), bias({n, groups, {out, 1}}, {.rank = 2});
        NoisyTopKGate<double, Space> router(in, n, groups, {.k = 2, .balance_coefficient = 0.3, .init_std = 0.5}, 3);
        MergedLinear layer(weights, &bias, router, layout);
        const auto ws = make_workspace<Space>(layer.workspace_bytes());
        const Tensors t = random_tensors(layout.tokens(), in, out, n, gen);
        const HostMatrix d_y_all = random_matrix(layout.tokens(), out, gen);
        const HostMatrix d_y = d_y_all - outside_segment_0(layout, d_y_all);
        run(layer, StepContext{.seed = 3, .step = 2}, t, ws);
        const Gradients g = backward(layer, d_y, 0.0, t, ws);
        for (const auto& p : router.parameters())
          for (const double v : host_values(p.gradient)) BOOST_TEST(v == 0.0, p.name);
        BOOST_TEST(g.experts_w.cwiseAbs().maxCoeff() > 0.0);  // the experts do get segment 0's gradient
      }
    }
}

// algorithms.md §10 at the layer: with causal segment routing, perturbing the input at any position changes no output at
// an earlier position, except inside segment 0, whose routing depends on its own tokens (the documented leak).
BOOST_AUTO_TEST_CASE(segment_routing_keeps_outputs_causal) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const RoutingLayout layout{.sequences = 2, .length = 9, .granularity = Granularity::causal_segment, .segment = 3};
    const std::size_t in = 4, out = 3, n = 3, groups = layout.groups();
    const MergeOptions half{.alpha = 0.5};
    Domain<double, Space> weights({n, groups, {out, in}}, half), bias({n, groups, {out, 1}}, half);
    NoisyTopKGate<double, Space> router(in, n, groups, {.init_std = 0.5}, 4);
    MergedLinear layer(weights, &bias, router, layout);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    const Tensors t = random_tensors(layout.tokens(), in, out, n, gen);
    const StepContext step{.seed = 1, .step = 1, .stream = 0, .training = true};
    const HostMatrix before = run(layer, step, t, ws).first;
    std::size_t leaks = 0;
    for (std::size_t token = 0; token < layout.tokens(); ++token) {
      Tensors moved = t;
      moved.x.row(static_cast<Eigen::Index>(token)).array() += 0.5;
      const HostMatrix after = run(layer, step, moved, ws).first;
      const std::size_t first_of_sequence = token / layout.length * layout.length;
      for (std::size_t earlier = first_of_sequence; earlier < token; ++earlier) {
        const bool changed = (after.row(earlier) - before.row(earlier)).cwiseAbs().maxCoeff() > 0;
        const bool in_segment_0 = token - first_of_sequence < layout.segment;
        if (changed && !in_segment_0) BOOST_FAIL("token " << token << " changed the output at " << earlier);
        leaks += changed;
      }
      // Other sequences never move.
      for (std::size_t other = 0; other < layout.tokens(); ++other)
        if (other / layout.length != token / layout.length)
          BOOST_TEST((after.row(other) - before.row(other)).cwiseAbs().maxCoeff() == 0.0);
    }
    BOOST_TEST(leaks > 0u);  // segment 0's own routing does leak, as documented: the check can see a change
  }
}

// What the host must learn in a step (both policies' statuses, the gate's loss) is read once at the end of
// forward, or left on a caller's batch: the same outputs and loss either way, and a non-finite token reported
// from forward, after which the layer runs on.
BOOST_AUTO_TEST_CASE(forward_reads_back_once_or_leaves_it_to_the_caller) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t in = 4, out = 5, n = 3, groups = segments.groups();
    Domain<double, Space> weights({n, groups, {out, in}}, {.alpha = 0.5}), bias({n, groups, {out, 1}}, {.alpha = 0.5});
    NoisyTopKGate<double, Space> router(in, n, groups, {.k = 2, .balance_coefficient = 0.3, .init_std = 0.5}, 4);
    MergedLinear layer(weights, &bias, router, segments);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    Tensors t = random_tensors(segments.tokens(), in, out, n, gen);
    const StepContext step{.seed = 9, .step = 3};
    const auto [y, aux] = run(layer, step, t, ws);
    BOOST_TEST(aux > 0.0);

    ReadBackBatch<Space> batch;
    StepContext carried = step;
    carried.read_backs = &batch;
    const auto [y_carried, aux_carried] = run(layer, carried, t, ws);
    BOOST_TEST(aux_carried == 0.0, "the gate's loss waits on the caller's batch");
    BOOST_TEST(batch.pending() == 4u, "the tokens' check, two statuses and the loss");
    batch.read(Space{});
    BOOST_TEST(batch.loss() == aux);
    BOOST_TEST((y_carried - y).cwiseAbs().maxCoeff() == 0.0);

    Tensors bad = t;
    bad.x(4, 1) = std::nan("");
    require_argument_error([&] { run(layer, step, bad, ws); }, "x",
                           {"camex::RoutingStage::forward", "finite tokens", "sequence 0, positions 3 to 5", "rows 3 to 5 of x"});
    const auto [y_again, aux_again] = run(layer, step, t, ws);
    BOOST_TEST((y_again - y).cwiseAbs().maxCoeff() == 0.0, "the failed step leaves nothing behind");
    BOOST_TEST(aux_again == aux);
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  CAMEX_TEST_CONTEXT() {
    const std::size_t in = 4, out = 6, n = 3, groups = segments.groups();
    const MergeOptions half{.alpha = 0.5};
    Domain<float, Space> weights({n, groups, {out, in}}, half), bias({n, groups, {out, 1}}, half);
    Domain<float, Space> too_few_groups({n, groups - 1, {out, in}}, half), other_experts({n + 1, groups, {out, in}}, half);
    Domain<float, Space> wrong_bias({n, groups, {out + 1, 1}}, half);
    NoisyTopKGate<float, Space> router(in, n, groups);
    using Layer = MergedLinear<Domain<float, Space>, NoisyTopKGate<float, Space>>;
    require_argument_error([&] { Layer(other_experts, &bias, router, segments); }, "weight_policy",
                           {"router's 3 experts", "4 experts"});
    require_argument_error([&] { Layer(too_few_groups, &bias, router, segments); }, "weight_policy",
                           {"at least layout.groups() = 4", "3 groups"});
    require_argument_error([&] { Layer(weights, &wrong_bias, router, segments); }, "bias_policy", {"shape [6, 1]", "[7, 1]"});
    auto bad_layout = segments;
    bad_layout.segment = 4;
    require_argument_error([&] { Layer(weights, &bias, router, bad_layout); }, "layout.segment", {"4"});

    Layer layer(weights, &bias, router, segments);
    MergedLinear no_bias(weights, nullptr, router, segments);  // deduced: no cast of the null bias
    static_assert(std::same_as<decltype(no_bias), Layer>);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    Matrix<float, Space> x("x", segments.tokens(), in), y("y", segments.tokens(), out), ew("ew", n, out * in),
        bw("bw", 1, out * in), eb("eb", n, out), bb("bb", 1, out);
    const ExpertTensors<float, Space> w{ew, bw};
    const ExpertTensors<float, Space> b{eb, bb};
    require_argument_error([&] { layer.backward(Space{}, y, 0.0, x, {ew, bw}, ExpertGradients<float, Space>{eb, bb}, ws); },
                           "this", {"no forward"});
    require_argument_error([&] { layer.forward(Space{}, {}, Matrix<float, Space>("x", 11, in), PaddingFlags(), w, b, y, ws); }, "x",
                           {"[12, 4]", "[11, 4]"});
    require_argument_error([&] { layer.forward(Space{}, {}, x, PaddingFlags(), w, b, Matrix<float, Space>("y", 12, 5), ws); }, "y",
                           {"[12, 6]", "[12, 5]"});
    require_argument_error([&] { layer.forward(Space{}, {}, x, PaddingFlags(), w, std::nullopt, y, ws); }, "bias", {"none"});
    require_argument_error([&] { no_bias.forward(Space{}, {}, x, PaddingFlags(), w, b, y, ws); }, "bias", {"no bias policy"});
    require_argument_error([&] { layer.forward(Space{}, {}, x, PaddingFlags(), w, b, y, make_workspace<Space>(64)); }, "workspace",
                           {"64 bytes"});
    layer.forward(Space{}, {}, x, PaddingFlags(), w, b, y, ws);
    require_argument_error([&] { layer.backward(Space{}, x, 0.0, x, {ew, bw}, ExpertGradients<float, Space>{eb, bb}, ws); },
                           "d_y", {"[12, 6]", "[12, 4]"});
    require_argument_error([&] { layer.backward(Space{}, y, 0.0, y, {ew, bw}, ExpertGradients<float, Space>{eb, bb}, ws); },
                           "d_x", {"[12, 4]", "[12, 6]"});
    require_argument_error([&] { layer.backward(Space{}, y, 0.0, x, {ew, bw}, std::nullopt, ws); }, "d_bias", {"none"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
