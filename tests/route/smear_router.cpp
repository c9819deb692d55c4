// The SMEAR router: forward against a double reference (LayerNorms, dense softmax, expert dropout with
// renormalisation, drawn at the same sites); every gradient (router input and each parameter) against central
// finite differences in double; the dropout only in training; error paths.
#include "camex/route/smear_router.hpp"

#include "finite_difference.hpp"
#include "testing.hpp"

#include <cmath>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

using Router = SmearRouter<double, Space>;

Eigen::RowVectorXd layer_norm(const Eigen::RowVectorXd& x, const Eigen::RowVectorXd& gain, const Eigen::RowVectorXd& bias) {
  const double mean = x.mean(), var = (x.array() - mean).square().mean();
  return ((x.array() - mean) / std::sqrt(var + 1e-5)).matrix().cwiseProduct(gain) + bias;
}

/// The parameters as host matrices, in parameters() order.
std::vector<HostMatrix> read_parameters(const Router& router) {
  std::vector<HostMatrix> out;
  for (const auto& p : router.parameters()) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, p.value);
    const Eigen::Index rows = p.value.size() == router.channels() ? 1 : static_cast<Eigen::Index>(router.experts());
    HostMatrix m(rows, static_cast<Eigen::Index>(router.channels()));
    for (Eigen::Index k = 0; k < m.size(); ++k) m.data()[k] = host(k);
    out.push_back(m);
  }
  return out;
}

void write_parameter(const Router& router, std::size_t which, const HostMatrix& m) {
  const auto p = router.parameters()[which];
  auto host = Kokkos::create_mirror_view(p.value);
  for (Eigen::Index k = 0; k < m.size(); ++k) host(k) = m.data()[k];
  Kokkos::deep_copy(p.value, host);
}

/// algorithms.md §2.2 in double with the router's own parameters and dropout sites.
HostMatrix reference(const Router& router, const HostMatrix& z, const StepContext& step) {
  const auto params = read_parameters(router);
  const auto& o = router.options();
  const HostMatrix& w = params[2];
  HostMatrix v = w;
  if (o.normalize_weights)
    for (Eigen::Index j = 0; j < w.rows(); ++j) v.row(j) = layer_norm(w.row(j), params[3].row(j), params[4].row(j));
  const CounterRng rng(step.seed, step.step);
  const double drop = step.training ? o.expert_dropout : 0.0;
  HostMatrix scores(z.rows(), w.rows());
  for (Eigen::Index g = 0; g < z.rows(); ++g) {
    const Eigen::RowVectorXd u = layer_norm(z.row(g), params[0].row(0), params[1].row(0));
    Eigen::RowVectorXd p = (v * u.transpose()).transpose();
    p = (p.array() - p.maxCoeff()).exp();
    p /= p.sum();
    if (drop > 0) {
      for (Eigen::Index j = 0; j < p.size(); ++j) {
        const bool keep = rng.uniform({step.stream, static_cast<std::uint32_t>(j), step.first_group + static_cast<std::uint64_t>(g)}) >= drop;
        p(j) = (keep ? p(j) : 0.0) + 1e-10;
      }
      p /= p.sum();
    }
    scores.row(g) = p;
  }
  return scores;
}

HostMatrix run(Router& router, const StepContext& step, const HostMatrix& z, const Workspace<Space>& workspace) {
  Matrix<double, Space> scores("scores", z.rows(), router.experts());
  BOOST_TEST(router.forward(Space{}, step, to_device<double>(z), scores, workspace) == 0.0);
  return to_host(scores);
}

/// Parameters away from their initial values, so no gain is tiny and no bias zero.
void randomise(const Router& router, std::mt19937_64& gen) {
  const auto params = read_parameters(router);
  for (std::size_t k = 0; k < params.size(); ++k)
    write_parameter(router, k, random_matrix(params[k].rows(), params[k].cols(), gen, k == 0 || k == 3 ? 0.5 : -1, 1.5));
}

struct Case {
  const char* name;
  SmearRouterOptions options;
  bool training;
};

std::vector<Case> cases() {
  return {{"normalized weights, dropout, training", {.expert_dropout = 0.3}, true},
          {"normalized weights, dropout, evaluation", {.expert_dropout = 0.3}, false},
          {"raw weights, no dropout", {.normalize_weights = false}, true}};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(smear_router)

BOOST_AUTO_TEST_CASE(forward_matches_the_definition) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = 11, channels = 17, n = 6;
    for (const auto& c : cases()) {
      BOOST_TEST_CONTEXT(c.name) {
        Router router(channels, n, groups, c.options, 4);
        randomise(router, gen);
        const auto workspace = make_workspace<Space>(router.workspace_bytes());
        const HostMatrix z = random_matrix(groups, channels, gen);
        // first_group: this batch as the share from group 7 on of a larger one (its draws keyed by the whole batch's index).
        const StepContext step{.seed = 3, .step = 2, .stream = 1, .training = c.training, .first_group = 7};
        const HostMatrix got = run(router, step, z, workspace), expected = reference(router, z, step);
        // Double: LayerNorms and dot products of 17 terms, a softmax; relative rounding of a few hundred ulps.
        BOOST_TEST((got - expected).cwiseAbs().maxCoeff() <= 1e-13);
        BOOST_TEST((got.rowwise().sum().array() - 1).abs().maxCoeff() <= 1e-14);
        // Dropout did zero (up to 1e-10) some scores: the comparison above covered the dropout path.
        if (c.training && c.options.expert_dropout > 0) BOOST_TEST((got.array() < 1e-9).any());
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = 5, channels = 6, n = 4;
    for (const auto& c : cases()) {
      BOOST_TEST_CONTEXT(c.name) {
        Router router(channels, n, groups, c.options, 8);
        randomise(router, gen);
        const auto workspace = make_workspace<Space>(router.workspace_bytes());
        const HostMatrix z = random_matrix(groups, channels, gen);
        const HostMatrix d_scores = random_matrix(groups, n, gen);
        const StepContext step{.seed = 1, .step = 9, .stream = 3, .training = c.training};
        HostMatrix at = z;
        const auto objective = [&] { return (run(router, step, at, workspace).array() * d_scores.array()).sum(); };

        objective();  // the forward the backward below differentiates
        Matrix<double, Space> d_z("d_z", groups, channels);
        router.backward(Space{}, to_device<double>(d_scores), 0.0, d_z, workspace);
        std::vector<std::vector<double>> grads;
        for (const auto& p : router.parameters()) grads.push_back(host_values(p.gradient));
        BOOST_REQUIRE(grads.size() == (c.options.normalize_weights ? 5u : 3u));

        GradientCheck check(objective);
        check.matrix(at, to_host(d_z));
        const auto params = router.parameters();
        for (std::size_t which = 0; which < params.size(); ++which) check.parameter(params[which].value, grads[which]);
        const double worst = check.worst(), scale = check.scale();
        // Central differences of a smooth function: truncation O(h^2) and rounding O(eps / h), about 1e-10 at these
        // magnitudes; the bound leaves a factor of 100.
        BOOST_TEST(worst <= 1e-8 * std::max(1.0, scale), "worst " << worst << " of gradients up to " << scale);
        BOOST_TEST(scale > 1e-3);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  CAMEX_TEST_CONTEXT() {
    using R = SmearRouter<float, Space>;
    require_argument_error([] { R(0, 4, 2); }, "channels", {"0"});
    require_argument_error([] { R(3, 0, 2); }, "experts", {"between 1 and 64", "0"});
    require_argument_error([] { R(3, 4, 0); }, "max_groups", {"0"});
    require_argument_error([] { R(3, 4, 2, {.expert_dropout = 1}); }, "options.expert_dropout", {"[0, 1)", "1"});
    require_argument_error([] { R(3, 4, 2, {.init_std = -1}); }, "options.init_std", {"-1"});
    require_argument_error([] { R(3, 4, 2, {.column_gain = INFINITY}); }, "options.column_gain", {"inf"});
    {  // a router for a layout takes its groups from it: 3 sequences, one group each
      R for_layout(3, 4, RoutingLayout{.sequences = 3, .length = 5});
      const auto ws = make_workspace<Space>(for_layout.workspace_bytes());
      Matrix<float, Space> scores("scores", 4, 4);
      require_argument_error([&] { for_layout.forward(Space{}, {}, Matrix<float, Space>("z", 4, 3), scores, ws); },
                             "routed", {"at most max_groups = 3 rows"});
    }
    R router(3, 4, 2);
    const auto workspace = make_workspace<Space>(router.workspace_bytes());
    Matrix<float, Space> z("z", 2, 3), scores("scores", 2, 4), d_z("d_z", 2, 3);
    require_argument_error([&] { router.backward(Space{}, scores, 0.0, d_z, workspace); }, "this", {"no forward"});
    require_argument_error([&] { router.forward(Space{}, {}, Matrix<float, Space>("z", 3, 3), Matrix<float, Space>("s", 3, 4), workspace); },
                           "routed", {"at most max_groups = 2"});
    require_argument_error([&] { router.forward(Space{}, {}, Matrix<float, Space>("z", 2, 2), scores, workspace); }, "routed",
                           {"[2, 3]", "[2, 2]"});
    require_argument_error([&] { router.forward(Space{}, {}, z, Matrix<float, Space>("s", 2, 5), workspace); }, "scores",
                           {"[2, 4]", "[2, 5]"});
    require_argument_error([&] { router.forward(Space{}, {}, z, scores, make_workspace<Space>(64)); }, "workspace", {"64 bytes"});
    router.forward(Space{}, {}, z, scores, workspace);
    require_argument_error([&] { router.backward(Space{}, Matrix<float, Space>("d", 2, 3), 0.0, d_z, workspace); }, "d_scores",
                           {"[2, 4]", "[2, 3]"});
    require_argument_error([&] { router.backward(Space{}, scores, 0.0, Matrix<float, Space>("d", 1, 3), workspace); }, "d_routed",
                           {"[2, 3]", "[1, 3]"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
