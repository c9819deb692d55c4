// The routing stage (tokens -> merge scores -> back) under both gate-row conventions, every built-in router and the
// routing layouts (sequences, causal segments, one segment per sequence): the scores are the router's rows on the
// convention's means, picked per group, and the loss is the router's on those rows (against a double reference);
// every gradient against central finite differences in double, with the detached merges (segment 0 under causal
// segments) left out of the objective; those merges send exactly no gradient to the router or to x; and where the
// balancing loss's gradient goes with one segment per sequence.
#include "camex/route/routing_stage.hpp"

#include "camex/route/noisy_top_k.hpp"
#include "camex/route/smear_router.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

using PaddingFlags = Matrix<std::uint8_t, Space>;

std::vector<RoutingLayout> layouts() {
  std::vector<RoutingLayout> out;
  for (const GateRows rows : {GateRows::per_segment, GateRows::per_group}) {
    out.push_back({.sequences = 3, .length = 4, .gate_rows = rows});
    out.push_back({.sequences = 2, .length = 9, .granularity = Granularity::causal_segment, .segment = 3, .gate_rows = rows});
    out.push_back({.sequences = 2, .length = 5, .granularity = Granularity::causal_segment, .segment = 5, .gate_rows = rows});
  }
  return out;
}

std::string describe(const RoutingLayout& layout) {
  return concat(layout.granularity == Granularity::sequence ? "sequences" : "causal segments", ", ",
                        layout.groups(), " groups, ",
                        layout.gate_rows == GateRows::per_segment ? "per_segment" : "per_group", " gate rows");
}

/// The definitions, written out: the group router row r is computed from, and the row group g merges with.
std::size_t reference_router_source(const RoutingLayout& layout, std::size_t r) {
  const std::size_t segment = r % layout.segments();
  if (layout.gate_rows == GateRows::per_segment || segment == 0) return r;
  return r - 1;
}
std::size_t reference_gate_row(const RoutingLayout& layout, std::size_t g) {
  const std::size_t segment = g % layout.segments();
  if (layout.gate_rows == GateRows::per_group || segment == 0) return g;
  return g - 1;
}
bool is_segment_0(const RoutingLayout& layout, std::size_t g) {
  return layout.granularity == Granularity::causal_segment && g % layout.segments() == 0;
}

/// One router of each kind, for `inputs` features, n experts, `groups` rows.
struct Routers {
  NoisyTopKGate<double, Space> top_k, dense;
  SmearRouter<double, Space> smear;
  Routers(std::size_t inputs, std::size_t n, std::size_t groups)
      : top_k(inputs, n, groups, {.k = 2, .balance_coefficient = 0.3, .init_std = 0.5}, 11),
        dense(inputs, n, groups, {.balance_coefficient = 0.2, .init_std = 0.5}, 12),
        smear(inputs, n, groups, {.expert_dropout = 0.3, .init_std = 0.3, .column_gain = 0.7}, 13) {}
};

/// Calls body(name, router) for each built-in router.
template <class Body>
void for_each_router(Routers& routers, Body&& body) {
  body("noisy top-2 of 4", routers.top_k);
  body("noisy, k = n", routers.dense);
  body("SMEAR with expert dropout", routers.smear);
}

template <class R>
struct Run {
  RoutingStage<R> stage;
  Workspace<Space> ws;
  Run(R& router, const RoutingLayout& layout, std::size_t inputs)
      : stage(router, layout, inputs), ws(make_workspace<Space>(stage.workspace_bytes())) {}
  /// scores and the loss for tokens x.
  std::pair<HostMatrix, double> forward(const StepContext& step, const HostMatrix& x) {
    Matrix<double, Space> scores("scores", stage.layout().groups(), stage.experts());
    const double loss = stage.forward(Space{}, step, to_device<double>(x), PaddingFlags(), scores, ws);
    return {to_host(scores), loss};
  }
  /// d_x (the routing path only) for d_scores and d_loss, after a forward.
  HostMatrix backward(const HostMatrix& d_scores, double d_loss, std::size_t tokens, std::size_t inputs) {
    Matrix<double, Space> d_x("d_x", tokens, inputs);
    stage.backward(Space{}, to_device<double>(d_scores), d_loss, d_x, ws);
    return to_host(d_x);
  }
};

const StepContext step{.seed = 5, .step = 3, .stream = 2, .training = true};

}  // namespace

BOOST_AUTO_TEST_SUITE(routing_stage)

BOOST_AUTO_TEST_CASE(scores_are_the_convention_s_gate_rows) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t inputs = 5, n = 4;
    for (const auto& layout : layouts()) {
      Routers routers(inputs, n, layout.groups());
      for_each_router(routers, [&](const char* name, auto& router) {
        BOOST_TEST_CONTEXT(describe(layout) << ", " << name) {
          const HostMatrix x = random_matrix(static_cast<Eigen::Index>(layout.tokens()), inputs, gen);
          Run run(router, layout, inputs);
          const auto [scores, loss] = run.forward(step, x);
          // The router on its own, on each row's mean computed here.
          HostMatrix means(static_cast<Eigen::Index>(layout.groups()), inputs);
          const std::size_t per = layout.group_length();
          for (std::size_t r = 0; r < layout.groups(); ++r) {
            const std::size_t source = reference_router_source(layout, r);
            means.row(r) = x.middleRows(static_cast<Eigen::Index>(source * per), static_cast<Eigen::Index>(per)).colwise().mean();
          }
          Matrix<double, Space> gates("gates", layout.groups(), n);
          auto ws = make_workspace<Space>(router.workspace_bytes());
          const double expected_loss = router.forward(Space{}, step, to_device<double>(means), gates, ws);
          const HostMatrix g = to_host(gates);
          double worst = 0;
          for (std::size_t group = 0; group < layout.groups(); ++group)
            worst = std::max(worst, (scores.row(group) - g.row(reference_gate_row(layout, group))).cwiseAbs().maxCoeff());
          // Double: the means differ by the roundoff of summing T terms, which moves logits and scores by as much.
          BOOST_TEST(worst <= 1e-14);
          BOOST_TEST(std::abs(loss - expected_loss) <= 1e-14 * std::max(1.0, std::abs(expected_loss)));
        }
      });
    }
  }
}

// J = sum over the groups that are not detached of <scores_g, w_g> + d_loss * loss: the backward run with every
// row of w (the detached ones too) must give J's gradient. Under per_group gate rows the routing mean of segment 0's
// own row is detached as well, so with d_loss != 0 the x entries of segment 0 are left out there.
BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t inputs = 3, n = 4;
    for (const auto& layout : layouts())
      for (const double d_loss : {0.0, 0.7}) {
        Routers routers(inputs, n, layout.groups());
        for_each_router(routers, [&](const char* name, auto& router) {
          BOOST_TEST_CONTEXT(describe(layout) << ", " << name << ", d_loss " << d_loss) {
            HostMatrix x = random_matrix(static_cast<Eigen::Index>(layout.tokens()), inputs, gen);
            const HostMatrix w = random_matrix(static_cast<Eigen::Index>(layout.groups()), n, gen);
            Run run(router, layout, inputs);
            HostMatrix live = w;
            for (std::size_t g = 0; g < layout.groups(); ++g)
              if (is_segment_0(layout, g)) live.row(g).setZero();
            const auto objective = [&] {
              const auto [scores, loss] = run.forward(step, x);
              return (scores.array() * live.array()).sum() + d_loss * loss;
            };
            objective();
            const HostMatrix d_x = run.backward(w, d_loss, layout.tokens(), inputs);
            std::vector<std::vector<double>> grads;
            for (const auto& p : router.parameters()) grads.push_back(host_values(p.gradient));

            GradientCheck check(objective);
            const bool row_0_mean_detached = layout.gate_rows == GateRows::per_group &&
                                             layout.granularity == Granularity::causal_segment && d_loss != 0;
            check.matrix(x, d_x, [&](Eigen::Index k) {
              const auto token = static_cast<std::size_t>(k) / inputs;
              return row_0_mean_detached && token % layout.length < layout.segment;
            });
            const auto params = router.parameters();
            for (std::size_t p = 0; p < params.size(); ++p) check.parameter(params[p].value, grads[p]);
            BOOST_TEST(check.worst() <= 1e-7 * std::max(1.0, check.scale()),
                       "worst " << check.worst() << " of gradients up to " << check.scale());
            // With one segment every merge is detached: only the balancing loss can move anything (checked below).
            if (layout.granularity == Granularity::sequence || layout.segments() > 1) BOOST_TEST(check.scale() > 1e-3);
          }
        });
      }
  }
}

// The stopped gradient of docs/algorithms.md §2.3, exactly: cotangents on segment 0's scores alone give zero router gradients
// and zero d_x, entry by entry, for every router and both conventions.
BOOST_AUTO_TEST_CASE(detached_merges_send_no_gradient) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t inputs = 3, n = 4;
    for (const auto& layout : layouts()) {
      if (layout.granularity != Granularity::causal_segment) continue;
      Routers routers(inputs, n, layout.groups());
      for_each_router(routers, [&](const char* name, auto& router) {
        BOOST_TEST_CONTEXT(describe(layout) << ", " << name) {
          const HostMatrix x = random_matrix(static_cast<Eigen::Index>(layout.tokens()), inputs, gen);
          HostMatrix w = random_matrix(static_cast<Eigen::Index>(layout.groups()), n, gen);
          for (std::size_t g = 0; g < layout.groups(); ++g)
            if (!is_segment_0(layout, g)) w.row(g).setZero();
          Run run(router, layout, inputs);
          run.forward(step, x);
          const HostMatrix d_x = run.backward(w, 0.0, layout.tokens(), inputs);
          BOOST_TEST(d_x.cwiseAbs().maxCoeff() == 0.0);
          for (const auto& p : router.parameters())
            for (const double v : host_values(p.gradient)) BOOST_TEST(v == 0.0, p.name);
          // The same cotangents on the other groups do reach the router (so the zeros above are not vacuous,
          // except with one segment, where segment 0 is every group).
          if (layout.segments() > 1) {
            HostMatrix rest = random_matrix(static_cast<Eigen::Index>(layout.groups()), n, gen);
            run.forward(step, x);
            BOOST_TEST(run.backward(rest, 0.0, layout.tokens(), inputs).cwiseAbs().maxCoeff() > 0.0);
          }
        }
      });
    }
  }
}

// With one segment per sequence (T = L) the merges are all detached and only the balancing loss trains the router.
// Its gradient reaches x under per_segment gate rows (the CAMEx code) and not under per_group ones.
BOOST_AUTO_TEST_CASE(one_segment_balancing_gradient_reaches_x_only_per_segment) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t inputs = 3, n = 4;
    for (const GateRows rows : {GateRows::per_segment, GateRows::per_group}) {
      const RoutingLayout layout{.sequences = 3, .length = 4, .granularity = Granularity::causal_segment, .segment = 4, .gate_rows = rows};
      NoisyTopKGate<double, Space> router(inputs, n, layout.groups(), {.balance_coefficient = 0.5, .init_std = 0.5}, 3);
      const HostMatrix x = random_matrix(static_cast<Eigen::Index>(layout.tokens()), inputs, gen);
      Run run(router, layout, inputs);
      run.forward(step, x);
      const HostMatrix d_x = run.backward(HostMatrix::Zero(static_cast<Eigen::Index>(layout.groups()), n), 1.0,
                                          layout.tokens(), inputs);
      const double reached = d_x.cwiseAbs().minCoeff();
      if (rows == GateRows::per_segment) BOOST_TEST(reached > 0.0);
      else BOOST_TEST(d_x.cwiseAbs().maxCoeff() == 0.0);
      double router_gradient = 0;
      for (const auto& p : router.parameters())
        for (const double v : host_values(p.gradient)) router_gradient = std::max(router_gradient, std::abs(v));
      BOOST_TEST(router_gradient > 0.0);
    }
  }
}

BOOST_AUTO_TEST_CASE(merge_scores_rejects_bad_arguments) {
  CAMEX_TEST_CONTEXT() {
    const RoutingLayout layout{.sequences = 2, .length = 8, .granularity = Granularity::causal_segment, .segment = 4};
    Matrix<float, Space> gates("gates", 4, 3), scores("scores", 4, 3);
    require_argument_error([&] { merge_scores(Space{}, layout, Matrix<float, Space>("g", 3, 3), scores); }, "gates",
                           {"[4, 3]", "[3, 3]"});
    require_argument_error([&] { merge_scores(Space{}, layout, gates, Matrix<float, Space>("s", 4, 2)); }, "scores",
                           {"[4, 3]", "[4, 2]"});
    require_argument_error([&] { merge_scores(Space{}, layout, gates, gates); }, "scores", {"disjoint"});
    require_argument_error([&] { merge_scores_backward(Space{}, layout, Matrix<float, Space>("d", 5, 3), gates); },
                           "d_scores", {"[4, 3]", "[5, 3]"});
    require_argument_error([&] { merge_scores_backward(Space{}, layout, scores, Matrix<float, Space>("d", 4, 1)); },
                           "d_gates", {"[4, 3]", "[4, 1]"});
    require_argument_error([&] { merge_scores_backward(Space{}, layout, scores, scores); }, "d_gates", {"disjoint"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
