// The curvature transform and the policies built on it (CurvatureAware, TIES-CA in both variants, DARE-CA):
// the factorisation rule, the mode products against an explicit Kronecker product (A (x) B) tau (C (x) D)^T built
// in double, the bias path, every gradient including all four factors by central differences, the docs/algorithms.md §10
// invariants (r = 1 and identity factors is domain merging, identity factors scale by r, the unit init is M = I,
// factor gradients vanish at an upcycled step 0), and the error paths.
#include "camex/merge/curvature_aware.hpp"
#include "camex/merge/dare.hpp"
#include "camex/merge/domain.hpp"
#include "camex/merge/ties.hpp"

#include "curvature_reference.hpp"
#include "policy_check.hpp"
#include "testing.hpp"

#include <array>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

PolicyInputs random_inputs(const MergeProblem& problem, std::mt19937_64& gen) {
  return {random_matrix(problem.experts, problem.shape.params(), gen), random_matrix(1, problem.shape.params(), gen),
          random_matrix(problem.groups, problem.experts, gen, 0.05, 1.0), {.seed = 99, .step = 5, .stream = 1}};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(curvature)

static_assert(MergePolicy<CurvatureAware<float, Space>>);
static_assert(MergePolicy<TiesCA<double, Space>>);
static_assert(MergePolicy<DareCA<float, Space>>);

BOOST_AUTO_TEST_CASE(factorisation_follows_the_camex_rule) {
  const std::vector<std::array<std::size_t, 3>> cases = {{768, 24, 32},    {1024, 32, 32},   {2048, 32, 64},
                                                         {3072, 48, 64},   {4096, 64, 64},   {11008, 86, 128},
                                                         {14336, 112, 128}, {769, 1, 769},   {1, 1, 1}, {6, 2, 3}};
  for (const auto& [d, f, g] : cases) {
    const auto [a, b] = nearest_factors(d);
    BOOST_TEST(a == f, d);
    BOOST_TEST(b == g, d);
  }
  require_argument_error([] { CurvatureTransform<float, Space>({.experts = 2, .groups = 1, .shape = {50257, 8}}); },
                         "problem.shape.rows", {"max_factor_extent = 1024", "given 50257 = 29 x 1733"});
  require_argument_error([] { CurvatureTransform<float, Space>({.experts = 2, .groups = 1, .shape = {8, 8}}, {.rank = 0}); },
                         "options.rank", {"at least 1"});
}

// Shapes chosen so every kernel path runs (modes with inner runs, the last mode's run of 1, unfactored modes),
// and a bias (rows x 1: output modes only); tests/kernels/mode_product.cpp covers the kernels' blockings.
BOOST_AUTO_TEST_CASE(matches_explicit_kronecker_product) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const TensorShape shape : {TensorShape{6, 12}, TensorShape{4, 128}, TensorShape{12, 1}, TensorShape{7, 10}}) {
      BOOST_TEST_CONTEXT("shape " << shape.rows << " x " << shape.cols) {
        const MergeProblem problem{.experts = 3, .groups = 2, .shape = shape};
        const std::size_t rank = 3;
        const double alpha = 0.8;
        CurvatureAware<float, Space> policy(problem, {.rank = rank}, {.alpha = alpha});
        const auto f = randomise_factors(policy.transform(), problem.experts, gen);
        const auto in = random_inputs(problem, gen);
        const HostMatrix got = run_merge(policy, in);
        HostMatrix expected(problem.groups, shape.params());
        double magnitude = 0;
        for (std::size_t b = 0; b < problem.groups; ++b) {
          expected.row(b) = in.base;
          for (std::size_t i = 0; i < problem.experts; ++i) {
            const HostMatrix tau = rounded<float>(in.experts.row(i)) - rounded<float>(in.base);
            const HostMatrix m = reference_transform(f, rank, problem.experts, i, reshape(tau, shape.rows, shape.cols));
            expected.row(b) += alpha * in.scores(b, i) * Eigen::Map<const HostMatrix>(m.data(), 1, shape.params());
            magnitude += m.cwiseAbs().maxCoeff();
          }
        }
        // Each transformed entry is r * (o1 + o2 + i1 + i2)-term sums in float over factors near 1: bound the
        // error by (a generous) 4 * r * (o1 + o2 + i1 + i2) * u times the magnitudes involved.
        const auto& e = policy.transform().extents();
        const double bound = 4.0 * rank * (e[0] + e[1] + e[2] + e[3]) * unit_roundoff<float> * (magnitude + 1) * 4;
        const double worst = (got - expected).cwiseAbs().maxCoeff();
        BOOST_TEST(worst <= bound, "worst " << worst << " > " << bound);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(gradients_by_finite_differences) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const TensorShape shape : {TensorShape{4, 6}, TensorShape{6, 1}, TensorShape{2, 16}}) {
      BOOST_TEST_CONTEXT("shape " << shape.rows << " x " << shape.cols) {
        const MergeProblem problem{.experts = 3, .groups = 2, .shape = shape};
        const auto in = random_inputs(problem, gen);
        const HostMatrix dm = random_matrix(problem.groups, shape.params(), gen);
        CurvatureAware<double, Space> ca(problem, {.rank = 2}, {.alpha = 0.9});
        randomise_factors(ca.transform(), problem.experts, gen);
        check_gradients(ca, in, dm);
        TiesCA<double, Space> ties(problem, {.options = {.density = 0.5}}, {.rank = 2});
        randomise_factors(ties.transform(), problem.experts, gen);
        check_gradients(ties, in, dm);
        TiesCA<double, Space> code(problem, {.variant = TiesVariant::sign_agreement}, {.rank = 2});
        randomise_factors(code.transform(), problem.experts, gen);
        check_gradients(code, in, dm);
        DareCA<double, Space> dare(problem, {.drop = 0.3, .rescale = DareRescale::l1_norm}, {.rank = 2});
        randomise_factors(dare.transform(), problem.experts, gen);
        check_gradients(dare, in, dm);
        DareCA<double, Space> drop2d(problem, {.drop = 0.5, .granularity = DareGranularity::expert}, {.rank = 1});
        randomise_factors(drop2d.transform(), problem.experts, gen);
        check_gradients(drop2d, in, dm);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(rejects_non_finite_experts_and_base) {
  std::mt19937_64 gen(test_seed());
  const MergeProblem problem{.experts = 3, .groups = 2, .shape = {4, 6}};
  const auto in = random_inputs(problem, gen);
  CurvatureAware<float, Space> ca(problem, {.rank = 2}, {.alpha = 0.9});
  require_rejects_non_finite(ca, in);
  PolicyInputs no_base = in;
  no_base.base = HostMatrix();
  CurvatureAware<float, Space> without_base(problem, {.rank = 2}, {.base = BaseSource::none});
  require_rejects_non_finite(without_base, no_base);
  TiesCA<float, Space> ties(problem, {.options = {.density = 0.5}}, {.rank = 2});
  require_rejects_non_finite(ties, in);
  TiesCA<float, Space> code(problem, {.variant = TiesVariant::sign_agreement}, {.rank = 2});
  require_rejects_non_finite(code, in);
  DareCA<float, Space> dare(problem, {.drop = 0.3, .rescale = DareRescale::l1_norm}, {.rank = 2});
  require_rejects_non_finite(dare, in);
  DareCA<float, Space> drop2d(problem, {.drop = 0.5, .granularity = DareGranularity::expert}, {.rank = 1});
  require_rejects_non_finite(drop2d, in);
}

// algorithms.md §10: with identity factors, r = 1 is domain merging and rank r scales the step by r; the default (unit)
// init is M = I whatever the rank.
BOOST_AUTO_TEST_CASE(identity_factors_reproduce_domain_merging) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const MergeProblem problem{.experts = 3, .groups = 2, .shape = {12, 20}};
    const auto in = random_inputs(problem, gen);
    Domain<double, Space> domain(problem, {.alpha = 0.7}), scaled(problem, {.alpha = 0.7 * 4});
    const HostMatrix reference = run_merge(domain, in);
    CurvatureAware<double, Space> one(problem, {.rank = 1, .init = CurvatureInit::identity_factors}, {.alpha = 0.7});
    BOOST_TEST((run_merge(one, in) - reference).cwiseAbs().maxCoeff() <= 1e-14);
    CurvatureAware<double, Space> four(problem, {.rank = 4, .init = CurvatureInit::identity_factors}, {.alpha = 0.7});
    BOOST_TEST((run_merge(four, in) - run_merge(scaled, in)).cwiseAbs().maxCoeff() <= 1e-13);
    CurvatureAware<double, Space> unit(problem, {.rank = 8}, {.alpha = 0.7});
    BOOST_TEST((run_merge(unit, in) - reference).cwiseAbs().maxCoeff() <= 1e-13);
  }
}

// algorithms.md §10: at an upcycled step 0 (every expert equal to the base) the output is the dense layer and the factors
// get no gradient.
BOOST_AUTO_TEST_CASE(upcycled_step_zero) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const MergeProblem problem{.experts = 3, .groups = 2, .shape = {6, 12}};
    auto in = random_inputs(problem, gen);
    for (std::size_t i = 0; i < problem.experts; ++i) in.experts.row(i) = in.base;
    TiesCA<double, Space> policy(problem, {.variant = TiesVariant::sign_agreement}, {.rank = 2});
    randomise_factors(policy.transform(), problem.experts, gen);
    BOOST_TEST((run_merge(policy, in) - in.base.replicate(2, 1)).cwiseAbs().maxCoeff() == 0.0);
    const auto g = run_backward(policy, in, random_matrix(2, problem.shape.params(), gen));
    for (const auto& p : g.parameters) BOOST_TEST(p.cwiseAbs().maxCoeff() == 0.0);
  }
}

BOOST_AUTO_TEST_SUITE_END()
