// The merged FFN: forward against a double reference (one router's scores merging W1, b1, W2, b2, the activation
// between); an upcycled block is the dense FFN; every gradient against central finite differences in double, for
// each activation; error paths.
#include "camex/nn/merged_ffn.hpp"

#include "camex/merge/domain.hpp"
#include "camex/route/noisy_top_k.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <cmath>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

// The block's declared draw streams: W1's and b1's policies, W2's and b2's, the router's.
static_assert(MergedFFN<Domain<double, Space>, NoisyTopKGate<double, Space>>::random_streams == 5);

using PaddingFlags = Matrix<std::uint8_t, Space>;
using Policy = Domain<double, Space>;
using Gate = NoisyTopKGate<double, Space>;

constexpr RoutingLayout sequences{.sequences = 3, .length = 4};
/// As many tokens as `sequences`, in causal segments.
constexpr RoutingLayout segments{.sequences = 2, .length = 6, .granularity = Granularity::causal_segment, .segment = 3};

/// Zeroes the rows of tokens in a segment 0 (causal segments; nothing for sequences): an objective over the other
/// outputs has no detached path, so finite differences see every gradient.
HostMatrix outside_segment_0(const RoutingLayout& layout, HostMatrix d_y) {
  if (layout.granularity == Granularity::causal_segment)
    for (std::size_t t = 0; t < layout.tokens(); ++t)
      if (t % layout.length < layout.segment) d_y.row(static_cast<Eigen::Index>(t)).setZero();
  return d_y;
}
constexpr std::size_t in = 4, hid = 5, out = 3, n = 3;

/// The operands: x, then experts and base of W1, b1, W2, b2.
struct Operands {
  HostMatrix x;
  HostMatrix experts[4], base[4];
};

Operands random_operands(std::mt19937_64& gen) {
  Operands o{random_matrix(sequences.tokens(), in, gen), {}, {}};
  const std::size_t sizes[4] = {hid * in, hid, out * hid, out};
  for (int k = 0; k < 4; ++k) {
    o.experts[k] = random_matrix(n, sizes[k], gen);
    o.base[k] = random_matrix(1, sizes[k], gen);
  }
  return o;
}

double reference_activation(Activation act, double h) {
  if (act == Activation::relu) return std::max(h, 0.0);
  if (act == Activation::gelu) return 0.5 * h * (1 + std::erf(h / std::sqrt(2.0)));
  return 0.5 * h * (1 + std::tanh(std::sqrt(2 / M_PI) * (h + 0.044715 * h * h * h)));
}

struct Block {
  RoutingLayout layout;
  Policy fc{layer_problem(layout, n, {hid, in}), {.alpha = 0.5}}, fc_bias{layer_problem(layout, n, {hid, 1}), {.alpha = 0.5}};
  Policy proj{layer_problem(layout, n, {out, hid}), {.alpha = 0.5}}, proj_bias{layer_problem(layout, n, {out, 1}), {.alpha = 0.5}};
  Gate router{in, n, layout, {.k = 2, .balance_coefficient = 0.4, .init_std = 0.5}, 5};
  MergedFFN<Policy, Gate> layer;
  Workspace<Space> ws;
  explicit Block(Activation act, const EvaluationOptions& evaluation = {}, const RoutingLayout& routing = sequences)
      : layout(routing),
        layer(fc, &fc_bias, proj, &proj_bias, router, layout, act, evaluation),
        ws(make_workspace<Space>(layer.workspace_bytes())) {}

  std::pair<HostMatrix, double> forward(const StepContext& step, const Operands& o) {
    std::vector<Matrix<double, Space>> keep;  // device copies live until the call returns
    const auto t = [&](int k) {
      keep.push_back(to_device<double>(o.experts[k]));
      keep.push_back(to_device<double>(o.base[k]));
      return ExpertTensors<double, Space>{keep[keep.size() - 2], keep.back()};
    };
    const auto w1 = t(0), b1 = t(1), w2 = t(2), b2 = t(3);
    Matrix<double, Space> y("y", layout.tokens(), out);
    const double aux = layer.forward(Space{}, step, to_device<double>(o.x), PaddingFlags(), w1, b1, w2, b2, y, ws);
    return {to_host(y), aux};
  }

  /// d_x, then experts' and bases' gradients of W1, b1, W2, b2, then the router's, for the last forward.
  std::vector<HostMatrix> backward(const Operands& o, const HostMatrix& d_y, double d_aux) {
    Matrix<double, Space> d_x("d_x", layout.tokens(), in);
    std::vector<Matrix<double, Space>> d_e, d_b;
    for (int k = 0; k < 4; ++k) {
      d_e.emplace_back("d_e", n, o.experts[k].cols());
      d_b.emplace_back("d_b", 1, o.base[k].cols());
    }
    const auto g = [&](int k) { return ExpertGradients<double, Space>{d_e[k], d_b[k]}; };
    layer.backward(Space{}, to_device<double>(d_y), d_aux, d_x, g(0), g(1), g(2), g(3), ws);
    std::vector<HostMatrix> out{to_host(d_x)};
    for (int k = 0; k < 4; ++k) {
      out.push_back(to_host(d_e[k]));
      out.push_back(to_host(d_b[k]));
    }
    for (const auto& p : router.parameters()) {
      const auto values = host_values(p.gradient);
      out.push_back(Eigen::Map<const HostMatrix>(values.data(), 1, static_cast<Eigen::Index>(values.size())));
    }
    return out;
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(merged_ffn)

BOOST_AUTO_TEST_CASE(forward_is_the_merged_module_applied_per_group) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const Activation act : {Activation::gelu_tanh, Activation::gelu, Activation::relu}) {
      Block block(act);
      const Operands o = random_operands(gen);
      const StepContext step{.seed = 2, .step = 5, .stream = 10, .training = true};
      const auto [y, aux] = block.forward(step, o);
      Matrix<double, Space> routed("routed", sequences.groups(), in), scores("scores", sequences.groups(), n);
      routing_inputs(Space{}, sequences, to_device<double>(o.x), PaddingFlags(), routed);
      auto ws = make_workspace<Space>(block.router.workspace_bytes());
      const double aux_expected = block.router.forward(Space{}, StepContext{2, 5, 14, true}, routed, scores, ws);
      const HostMatrix s = to_host(scores);
      HostMatrix expected(y.rows(), y.cols());
      for (std::size_t g = 0; g < sequences.groups(); ++g) {
        HostMatrix merged[4];
        for (int k = 0; k < 4; ++k) {
          merged[k] = o.base[k];
          for (std::size_t i = 0; i < n; ++i) merged[k] += 0.5 * s(g, i) * (o.experts[k].row(i) - o.base[k]);
        }
        const HostMatrix w1 = Eigen::Map<const HostMatrix>(merged[0].data(), hid, in);
        const HostMatrix w2 = Eigen::Map<const HostMatrix>(merged[2].data(), out, hid);
        for (std::size_t q = 0; q < sequences.length; ++q) {
          const Eigen::Index t = g * sequences.length + q;
          Eigen::VectorXd h = w1 * o.x.row(t).transpose() + merged[1].row(0).transpose();
          for (Eigen::Index j = 0; j < h.size(); ++j) h(j) = reference_activation(act, h(j));
          expected.row(t) = (w2 * h).transpose() + merged[3];
        }
      }
      BOOST_TEST((y - expected).cwiseAbs().maxCoeff() <= 1e-13);
      BOOST_TEST(aux == aux_expected);
    }
  }
}

// algorithms.md §10: upcycled experts (all equal to the base) give the dense FFN, whatever the router says.
BOOST_AUTO_TEST_CASE(upcycled_block_is_the_dense_ffn) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    Block block(Activation::gelu_tanh);
    Operands o = random_operands(gen);
    for (int k = 0; k < 4; ++k) o.experts[k] = o.base[k].replicate(n, 1);
    const auto [y, aux] = block.forward(StepContext{.seed = 3}, o);
    const HostMatrix w1 = Eigen::Map<const HostMatrix>(o.base[0].data(), hid, in);
    const HostMatrix w2 = Eigen::Map<const HostMatrix>(o.base[2].data(), out, hid);
    HostMatrix h = (o.x * w1.transpose()).rowwise() + o.base[1].row(0);
    h = h.unaryExpr([](double v) { return reference_activation(Activation::gelu_tanh, v); });
    const HostMatrix dense = (h * w2.transpose()).rowwise() + o.base[3].row(0);
    BOOST_TEST((y - dense).cwiseAbs().maxCoeff() <= 1e-13);
  }
}

// Per sequence every output is in the objective; with causal segments the outputs of segment 0, whose merge is
// detached from its gates by design, are left out (the next test pins what they send).
BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const RoutingLayout& layout : {sequences, segments})
    for (const Activation act : {Activation::gelu_tanh, Activation::gelu, Activation::relu}) {
      BOOST_TEST_CONTEXT("activation " << static_cast<int>(act) << ", groups " << layout.groups()) {
        Block block(act, {}, layout);
        Operands o = random_operands(gen);
        const HostMatrix d_y = outside_segment_0(layout, random_matrix(layout.tokens(), out, gen));
        const double d_aux = 0.8;
        const StepContext step{.seed = 6, .step = 2, .stream = 0, .training = true};
        const auto objective = [&] {
          const auto [y, aux] = block.forward(step, o);
          return (y.array() * d_y.array()).sum() + d_aux * aux;
        };
        objective();  // the forward the backward below differentiates
        const std::vector<HostMatrix> grads = block.backward(o, d_y, d_aux);
        GradientCheck check(objective);
        check.matrix(o.x, grads[0]);
        for (int k = 0; k < 4; ++k) {
          check.matrix(o.experts[k], grads[1 + 2 * k]);
          check.matrix(o.base[k], grads[2 + 2 * k]);
        }
        const auto params = block.router.parameters();
        for (std::size_t which = 0; which < params.size(); ++which) {
          const HostMatrix& g = grads[9 + which];
          check.parameter(params[which].value, std::vector<double>(g.data(), g.data() + g.size()));
        }
        const double worst = check.worst(), scale = check.scale();
        // Central differences of a smooth function (ReLU: no pre-activation within h of 0 on random inputs):
        // truncation O(h^2) and rounding O(eps / h), about 1e-9 here; the bound leaves a factor of 100.
        BOOST_TEST(worst <= 1e-7 * std::max(1.0, scale), "worst " << worst << " of gradients up to " << scale);
        BOOST_TEST(scale > 1e-2);
      }
    }
  }
}

// algorithms.md §2.3: segment 0 merges with gates whose gradient is stopped, so its outputs alone send exactly nothing to
// the router's parameters.
BOOST_AUTO_TEST_CASE(segment_0_outputs_do_not_train_the_router) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    Block block(Activation::gelu_tanh, {}, segments);
    const Operands o = random_operands(gen);
    const HostMatrix d_y_all = random_matrix(segments.tokens(), out, gen);
    const HostMatrix d_y = d_y_all - outside_segment_0(segments, d_y_all);
    block.forward(StepContext{.seed = 2, .step = 1}, o);
    const std::vector<HostMatrix> grads = block.backward(o, d_y, 0.0);
    for (std::size_t which = 9; which < grads.size(); ++which) BOOST_TEST(grads[which].cwiseAbs().maxCoeff() == 0.0);
    BOOST_TEST(grads[1].cwiseAbs().maxCoeff() > 0.0);  // the experts do get segment 0's gradient
  }
}

// algorithms.md §9 for each of the block's two linears: applying every prepared row and mixing gives what merging per
// group then applying gives, forward and backward.
BOOST_AUTO_TEST_CASE(evaluation_orders_agree) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    Block merging(Activation::gelu_tanh, {.order = EvaluationOrder::merge_then_apply});
    Block applying(Activation::gelu_tanh, {.order = EvaluationOrder::apply_then_mix});
    BOOST_TEST((merging.layer.fc_order() == EvaluationOrder::merge_then_apply &&
                merging.layer.proj_order() == EvaluationOrder::merge_then_apply));
    BOOST_TEST((applying.layer.fc_order() == EvaluationOrder::apply_then_mix &&
                applying.layer.proj_order() == EvaluationOrder::apply_then_mix));
    const Operands o = random_operands(gen);
    const HostMatrix d_y = random_matrix(sequences.tokens(), out, gen);
    const StepContext step{.seed = 8, .step = 1, .stream = 0, .training = true};
    const auto [y_merging, aux_merging] = merging.forward(step, o);
    const auto [y_applying, aux_applying] = applying.forward(step, o);
    // Double: the two orders sum the same O(1) products in different orders (n + 1 rows, I or H inputs).
    BOOST_TEST((y_applying - y_merging).cwiseAbs().maxCoeff() <= 1e-13);
    BOOST_TEST(aux_applying == aux_merging);
    const auto g_merging = merging.backward(o, d_y, 0.7), g_applying = applying.backward(o, d_y, 0.7);
    BOOST_TEST_REQUIRE(g_merging.size() == g_applying.size());
    for (std::size_t k = 0; k < g_merging.size(); ++k)
      BOOST_TEST((g_applying[k] - g_merging[k]).cwiseAbs().maxCoeff() <= 1e-12 * (1 + g_merging[k].cwiseAbs().maxCoeff()),
                 "gradient " << k);
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = sequences.groups();
    Policy fc({n, groups, {hid, in}}, {.alpha = 0.5}), proj({n, groups, {out, hid}}, {.alpha = 0.5});
    Policy wrong_proj({n, groups, {out, hid + 1}}, {.alpha = 0.5}), fc_bias({n, groups, {hid, 1}}, {.alpha = 0.5});
    Gate router(in, n, groups);
    using Layer = MergedFFN<Policy, Gate>;
    require_argument_error([&] { Layer(fc, nullptr, wrong_proj, nullptr, router, sequences); }, "proj",
                           {"5 columns", "6 columns"});
    require_argument_error([&] { Layer(fc, &proj, proj, nullptr, router, sequences); }, "fc_bias", {"shape [5, 1]", "shape [3, 5]"});
    Layer layer(fc, &fc_bias, proj, nullptr, router, sequences);
    // Deduced without casts, whichever biases are null.
    static_assert(std::same_as<decltype(MergedFFN(fc, nullptr, proj, nullptr, router, sequences)), Layer>);
    static_assert(std::same_as<decltype(MergedFFN(fc, &fc_bias, proj, nullptr, router, sequences)), Layer>);
    static_assert(std::same_as<decltype(MergedFFN(fc, nullptr, proj, &fc_bias, router, sequences, Activation::relu)), Layer>);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    Matrix<double, Space> x("x", sequences.tokens(), in), y("y", sequences.tokens(), out), e1("e1", n, hid * in),
        b1("b1", 1, hid * in), e2("e2", n, out * hid), b2("b2", 1, out * hid), eb("eb", n, hid), bb("bb", 1, hid);
    const ExpertTensors<double, Space> w1{e1, b1}, w2{e2, b2}, bias1{eb, bb};
    const ExpertGradients<double, Space> g1{e1, b1}, g2{e2, b2}, gb{eb, bb};
    require_argument_error([&] { layer.backward(Space{}, y, 0.0, x, g1, gb, g2, std::nullopt, ws); }, "this", {"no forward"});
    require_argument_error([&] { layer.forward(Space{}, {}, x, PaddingFlags(), w1, std::nullopt, w2, std::nullopt, y, ws); }, "fc_bias",
                           {"none"});
    require_argument_error([&] { layer.forward(Space{}, {}, x, PaddingFlags(), w1, bias1, w2, bias1, y, ws); }, "proj_bias",
                           {"no bias policy"});
    require_argument_error([&] { layer.forward(Space{}, {}, y, PaddingFlags(), w1, bias1, w2, std::nullopt, y, ws); }, "x",
                           {"[12, 4]", "[12, 3]"});
    require_argument_error([&] { layer.forward(Space{}, {}, x, PaddingFlags(), w1, bias1, w2, std::nullopt, x, ws); }, "y",
                           {"[12, 3]", "[12, 4]"});
    layer.forward(Space{}, {}, x, PaddingFlags(), w1, bias1, w2, std::nullopt, y, ws);
    require_argument_error([&] { layer.backward(Space{}, x, 0.0, x, g1, gb, g2, std::nullopt, ws); }, "d_y", {"[12, 3]"});
    require_argument_error([&] { layer.backward(Space{}, y, 0.0, y, g1, gb, g2, std::nullopt, ws); }, "d_x", {"[12, 4]"});
    require_argument_error([&] { layer.backward(Space{}, y, 0.0, x, g1, std::nullopt, g2, std::nullopt, ws); }, "d_fc_bias",
                           {"none"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
