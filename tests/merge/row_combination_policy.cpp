// RowCombinationPolicy: for every built-in policy, coefficients() times prepared_rows() is merge() (the identity
// the apply-then-mix order rests on), and backward_from_rows given dL/dC = d_merged Rᵀ and dL/dR = Cᵀ d_merged
// writes exactly what backward writes given d_merged, including through a dynamic chain; error paths.
#include "camex/camex.hpp"

#include "finite_difference.hpp"
#include "policy_check.hpp"
#include "testing.hpp"

#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

constexpr std::size_t n = 3, groups = 4;
const MergeProblem problem{.experts = n, .groups = groups, .shape = {6, 4}};
const StepContext training{.seed = 11, .step = 3, .stream = 2, .training = true};

/// What one backward path reports, on the host.
struct Reported {
  HostMatrix merged, d_experts, d_base, d_scores;
  std::vector<std::vector<double>> parameters;
};

template <class P>
std::vector<std::vector<double>> parameter_gradients(P& policy) {
  std::vector<std::vector<double>> out;
  for (const auto& p : policy.parameters()) out.push_back(host_values(p.gradient));
  return out;
}

/// merge + backward from d_merged.
template <class P>
Reported through_merged(P& policy, const PolicyInputs& in, const HostMatrix& d_merged) {
  const HostMatrix merged = run_merge(policy, in);
  const PolicyGradients g = run_backward(policy, in, d_merged);
  return {merged, g.d_experts, g.d_base, g.d_scores, parameter_gradients(policy)};
}

/// C R, then backward_from_rows with dL/dC and dL/dR formed here in double.
template <class P>
Reported through_rows(P& policy, const PolicyInputs& in, const HostMatrix& d_merged) {
  const auto ws = make_workspace<Space>(policy.workspace_bytes());
  const Matrix<double, Space> base = device_or_empty<P>(in.base);
  policy.prepare(Space{}, in.step, to_device<double>(in.experts), base, ws);
  const auto scores = to_device<double>(in.scores);
  const HostMatrix rows = to_host(policy.prepared_rows(Space{}, ws));
  const HostMatrix coef = to_host(policy.coefficients(Space{}, scores, ws));
  BOOST_TEST(static_cast<std::size_t>(rows.rows()) == policy.row_count());
  BOOST_TEST(static_cast<std::size_t>(coef.cols()) == policy.row_count());
  Matrix<double, Space> d_scores("d_scores", groups, n), d_experts("d_experts", n, in.experts.cols());
  Matrix<double, Space> d_base = in.base.size() ? Matrix<double, Space>("d_base", 1, in.experts.cols()) : Matrix<double, Space>();
  policy.backward_from_rows(Space{}, scores, to_device<double>(HostMatrix(d_merged * rows.transpose())),
                            to_device<double>(HostMatrix(coef.transpose() * d_merged)), d_scores, d_experts, d_base, ws);
  return {coef * rows, to_host(d_experts), in.base.size() ? to_host(d_base) : HostMatrix(), to_host(d_scores),
          parameter_gradients(policy)};
}

/// Both paths sum the same O(1) products in different orders: a few dozen roundings of double at most.
void require_same(const Reported& a, const Reported& b) {
  const auto close = [](const HostMatrix& x, const HostMatrix& y, const char* what) {
    BOOST_TEST_REQUIRE(x.rows() == y.rows());
    BOOST_TEST_REQUIRE(x.cols() == y.cols());
    if (x.size() == 0) return;
    BOOST_TEST((x - y).cwiseAbs().maxCoeff() <= 1e-12 * (1 + y.cwiseAbs().maxCoeff()), what);
  };
  close(a.merged, b.merged, "merged");
  close(a.d_experts, b.d_experts, "d_experts");
  close(a.d_base, b.d_base, "d_base");
  close(a.d_scores, b.d_scores, "d_scores");
  BOOST_TEST_REQUIRE(a.parameters.size() == b.parameters.size());
  for (std::size_t q = 0; q < a.parameters.size(); ++q) {
    const Eigen::Map<const Eigen::VectorXd> x(a.parameters[q].data(), static_cast<Eigen::Index>(a.parameters[q].size()));
    const Eigen::Map<const Eigen::VectorXd> y(b.parameters[q].data(), static_cast<Eigen::Index>(b.parameters[q].size()));
    BOOST_TEST((x - y).cwiseAbs().maxCoeff() <= 1e-12 * (1 + y.cwiseAbs().maxCoeff()), "parameter " << q);
  }
}

template <class P>
void check_policy(P& policy, bool with_base, std::mt19937_64& gen) {
  const std::size_t params = problem.shape.params();
  PolicyInputs in{random_matrix(n, params, gen), with_base ? random_matrix(1, params, gen) : HostMatrix(),
                  random_matrix(groups, n, gen, 0.05, 1.0), training};
  const HostMatrix d_merged = random_matrix(groups, params, gen);
  const Reported merged = through_merged(policy, in, d_merged);
  const Reported rows = through_rows(policy, in, d_merged);
  BOOST_TEST(merged.merged.cwiseAbs().maxCoeff() > 0.1);  // not a trivial merge
  require_same(rows, merged);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(row_combination_policy)

BOOST_AUTO_TEST_CASE(rows_and_coefficients_reproduce_every_policy) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const MergeOptions half{.alpha = 0.7};
    const CurvatureOptions curvature{.rank = 2};
    { Euclidean<double, Space> p(problem); BOOST_TEST_CONTEXT("euclidean") check_policy(p, false, gen); }
    { Domain<double, Space> p(problem, half); BOOST_TEST_CONTEXT("domain") check_policy(p, true, gen); }
    { Ties<double, Space> p(problem, {.options = {.density = 0.5}}); BOOST_TEST_CONTEXT("ties") check_policy(p, true, gen); }
    { TiesCA<double, Space> p(problem, {.options = {.density = 0.5}}, curvature);
      BOOST_TEST_CONTEXT("ties-ca") check_policy(p, true, gen); }
    { TiesCA<double, Space> p(problem, {.variant = TiesVariant::sign_agreement}, curvature);
      BOOST_TEST_CONTEXT("ties-ca, sign agreement") check_policy(p, true, gen); }
    { Dare<double, Space> p(problem, {.drop = 0.3}); BOOST_TEST_CONTEXT("dare") check_policy(p, true, gen); }
    { Dare<double, Space> p(problem, {.drop = 0.3, .granularity = DareGranularity::expert});
      BOOST_TEST_CONTEXT("dare, expert granularity") check_policy(p, true, gen); }
    { DareCA<double, Space> p(problem, {.drop = 0.3, .rescale = DareRescale::l1_norm}, curvature);
      BOOST_TEST_CONTEXT("dare-ca, l1 rescale") check_policy(p, true, gen); }
    { CurvatureAware<double, Space> p(problem, curvature);
      BOOST_TEST_CONTEXT("curvature-aware") check_policy(p, true, gen); }
    { CurvatureAware<double, Space> p(problem, curvature, {.alpha = 0.5, .base = BaseSource::expert, .base_expert = 1});
      BOOST_TEST_CONTEXT("curvature-aware, base from expert 1") check_policy(p, false, gen); }
  }
}

// Through a chain the upstream adjoint of the propagated base must reach backward_from_rows as it reaches backward.
BOOST_AUTO_TEST_CASE(rows_reproduce_a_dynamic_chain) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    constexpr std::size_t layers = 2;
    const std::size_t params = problem.shape.params();
    const HostMatrix base = random_matrix(1, params, gen);
    std::vector<HostMatrix> experts, scores, d_merged;
    for (std::size_t l = 0; l < layers; ++l) {
      experts.push_back(random_matrix(n, params, gen));
      scores.push_back(random_matrix(groups, n, gen, 0.05, 1.0));
      d_merged.push_back(random_matrix(groups, params, gen));
    }
    std::vector<Reported> by_path[2];
    for (const bool by_rows : {false, true}) {
      DynamicChain<double, Space> chain(layers, problem, {.gamma = 0.8, .alpha = 0.9, .curvature = {.rank = 2}});
      std::vector<Workspace<Space>> ws;
      for (std::size_t l = 0; l < layers; ++l) {
        ws.push_back(make_workspace<Space>(chain.layer(l).workspace_bytes()));
        chain.layer(l).prepare(Space{}, training, to_device<double>(experts[l]),
                               l == 0 ? to_device<double>(base) : Matrix<double, Space>(), ws[l]);
      }
      std::vector<Reported> reported(layers);
      for (std::size_t l = layers; l-- > 0;) {
        auto& layer = chain.layer(l);
        const auto s = to_device<double>(scores[l]);
        Matrix<double, Space> d_scores("d_scores", groups, n), d_experts("d_experts", n, params);
        Matrix<double, Space> d_base = l == 0 ? Matrix<double, Space>("d_base", 1, params) : Matrix<double, Space>();
        if (by_rows) {
          const HostMatrix rows = to_host(layer.prepared_rows(Space{}, ws[l]));
          const HostMatrix coef = to_host(layer.coefficients(Space{}, s, ws[l]));
          reported[l].merged = coef * rows;
          layer.backward_from_rows(Space{}, s, to_device<double>(HostMatrix(d_merged[l] * rows.transpose())),
                                   to_device<double>(HostMatrix(coef.transpose() * d_merged[l])), d_scores, d_experts,
                                   d_base, ws[l]);
        } else {
          Matrix<double, Space> merged("merged", groups, params);
          layer.merge(Space{}, s, merged, ws[l]);
          reported[l].merged = to_host(merged);
          layer.backward(Space{}, s, to_device<double>(d_merged[l]), d_scores, d_experts, d_base, ws[l]);
        }
        reported[l].d_experts = to_host(d_experts);
        reported[l].d_scores = to_host(d_scores);
        if (l == 0) reported[l].d_base = to_host(d_base);
        reported[l].parameters = parameter_gradients(layer);
      }
      by_path[by_rows] = reported;
    }
    for (std::size_t l = 0; l < layers; ++l) BOOST_TEST_CONTEXT("layer " << l) require_same(by_path[1][l], by_path[0][l]);
    // The chain's order rule holds for the rows path too: layer 0 before layer 1 is refused.
    DynamicChain<double, Space> chain(layers, problem, {.curvature = {.rank = 2}});
    std::vector<Workspace<Space>> ws;
    for (std::size_t l = 0; l < layers; ++l) {
      ws.push_back(make_workspace<Space>(chain.layer(l).workspace_bytes()));
      chain.layer(l).prepare(Space{}, training, to_device<double>(experts[l]),
                             l == 0 ? to_device<double>(base) : Matrix<double, Space>(), ws[l]);
    }
    Matrix<double, Space> d_coef("d_coef", groups, n + 1), d_rows("d_rows", n + 1, params), d_scores("d_scores", groups, n),
        d_experts("d_experts", n, params), d_base("d_base", 1, params);
    require_argument_error([&] {
      chain.layer(0).backward_from_rows(Space{}, to_device<double>(scores[0]), d_coef, d_rows, d_scores, d_experts, d_base, ws[0]);
    }, "this", {"layer 1's backward before layer 0's"});
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t params = problem.shape.params();
    Domain<double, Space> policy(problem, {.alpha = 0.5});
    const auto ws = make_workspace<Space>(policy.workspace_bytes());
    const auto scores = to_device<double>(random_matrix(groups, n, gen, 0.05, 1.0));
    require_argument_error([&] { policy.coefficients(Space{}, scores, ws); }, "this", {"prepare() to have run"});
    policy.prepare(Space{}, training, to_device<double>(random_matrix(n, params, gen)),
                   to_device<double>(random_matrix(1, params, gen)), ws);
    Matrix<double, Space> d_coef("d_coef", groups, n + 1), d_rows("d_rows", n + 1, params), d_scores("d_scores", groups, n),
        d_experts("d_experts", n, params), d_base("d_base", 1, params);
    Matrix<double, Space> short_coef("d_coef", groups, n), short_rows("d_rows", n, params);
    require_argument_error([&] { policy.backward_from_rows(Space{}, scores, short_coef, d_rows, d_scores, d_experts, d_base, ws); },
                           "d_coef", {"[B, m]", "[4, 3]"});
    require_argument_error([&] { policy.backward_from_rows(Space{}, scores, d_coef, short_rows, d_scores, d_experts, d_base, ws); },
                           "d_rows", {"[m, P]", "[3, 24]"});
    require_argument_error([&] { policy.backward_from_rows(Space{}, scores, d_coef, d_rows, d_scores, d_experts, {}, ws); },
                           "d_base", {"[1, P]"});
    Matrix<double, Space> wide_scores("scores", groups, n + 1);
    require_argument_error([&] { policy.coefficients(Space{}, wide_scores, ws); }, "scores", {"[4, 4]"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
