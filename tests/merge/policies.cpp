// The named policies with the identity transform (Euclidean, Domain, TIES in both variants, DARE at element and
// expert granularity with both rescales) against plain double references of their formulas on random inputs,
// every gradient against central finite differences, the base taken from an expert, train vs eval, the docs/algorithms.md §10
// invariants that need no curvature, and the error paths.
#include "camex/merge/dare.hpp"
#include "camex/merge/domain.hpp"
#include "camex/merge/euclidean.hpp"
#include "camex/merge/ties.hpp"

#include "policy_check.hpp"
#include "reference.hpp"
#include "testing.hpp"

#include <cmath>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

const TensorShape shape{4, 6};
constexpr std::size_t n = 3, groups = 2;
const MergeProblem problem{.experts = n, .groups = groups, .shape = shape};

PolicyInputs random_inputs(std::mt19937_64& gen, bool with_base = true) {
  PolicyInputs in;
  in.experts = random_matrix(n, shape.params(), gen);
  if (with_base) in.base = random_matrix(1, shape.params(), gen);
  in.scores = random_matrix(groups, n, gen, 0.05, 1.0);
  in.step = {.seed = 1234, .step = 7, .stream = 3, .training = true};
  return in;
}

/// base + alpha sum_i kappa[b, i] s[b, i] f_i .* (E_i - base), in double, from the given factor and kappa.
HostMatrix reference_merge(const PolicyInputs& in, double alpha, const HostMatrix& factor, const HostMatrix& kappa) {
  const std::size_t params = in.experts.cols();
  HostMatrix base = in.base.size() ? in.base : HostMatrix::Zero(1, params);
  HostMatrix merged(in.scores.rows(), params);
  for (Eigen::Index b = 0; b < merged.rows(); ++b) {
    merged.row(b) = base;
    for (std::size_t i = 0; i < n; ++i)
      merged.row(b) += alpha * kappa(b, i) * in.scores(b, i) *
                       factor.row(i).cwiseProduct(in.experts.row(i) - base);
  }
  return merged;
}

/// |got - expected| <= bound: each merged entry sums n + 1 terms, each with at most four roundings in float
/// (delta, factor product, coefficient, accumulation), so 4 (n + 1) u times the sum of the terms' magnitudes; the
/// magnitudes are at most 1 + 2 * max|factor| * alpha here, so the bound is taken on that scale.
template <class T>
void require_close(const HostMatrix& got, const HostMatrix& expected, double magnitude, const char* what) {
  const double bound = 4.0 * (n + 1) * unit_roundoff<T> * magnitude + 8 * unit_roundoff<double>;
  const double worst = (got - expected).cwiseAbs().maxCoeff();
  BOOST_TEST(worst <= bound, what << ": worst error " << worst << " > " << bound);
}

HostMatrix ones(std::size_t rows, std::size_t cols) { return HostMatrix::Ones(rows, cols); }

HostMatrix ties_factor(const PolicyInputs& in, const TiesOptions& options) {
  std::vector<std::vector<double>> deltas(n, std::vector<double>(in.experts.cols()));
  for (std::size_t i = 0; i < n; ++i)
    for (Eigen::Index p = 0; p < in.experts.cols(); ++p)
      deltas[i][p] = static_cast<float>(static_cast<float>(in.experts(i, p)) - static_cast<float>(in.base(0, p)));
  const auto f = reference_ties_factors<float>(deltas, std::vector<double>(n, 1.0), options);
  HostMatrix out(n, in.experts.cols());
  for (std::size_t i = 0; i < n; ++i)
    for (Eigen::Index p = 0; p < out.cols(); ++p) out(i, p) = f[i][p];
  return out;
}

/// Element-level DARE keep mask from the same counter-based draws camex makes.
HostMatrix dare_keep(const PolicyInputs& in, double drop) {
  const CounterRng rng(in.step.seed, in.step.step);
  HostMatrix keep(n, in.experts.cols());
  for (std::size_t i = 0; i < n; ++i)
    for (Eigen::Index p = 0; p < keep.cols(); ++p)
      keep(i, p) = rng.uniform({in.step.stream, static_cast<std::uint32_t>(i), static_cast<std::uint64_t>(p)}) <
                           static_cast<float>(drop)
                       ? 0.0
                       : 1.0;
  return keep;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(policies)

static_assert(MergePolicy<Euclidean<float, Space>>);
static_assert(MergePolicy<Domain<double, Space>>);
static_assert(MergePolicy<Ties<float, Space>>);
static_assert(MergePolicy<Dare<double, Space>>);

BOOST_AUTO_TEST_CASE(euclidean_is_smear) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const auto in = random_inputs(gen, false);
    Euclidean<float, Space> policy(problem);
    require_close<float>(run_merge(policy, in), in.scores * in.experts, 2 * n, "merged");
    Euclidean<double, Space> exact(problem);
    check_gradients(exact, in, random_matrix(groups, shape.params(), gen));
  }
}

BOOST_AUTO_TEST_CASE(domain_with_alpha) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const auto in = random_inputs(gen);
    Domain<float, Space> policy(problem, {.alpha = 0.7});
    require_close<float>(run_merge(policy, in), reference_merge(in, 0.7, ones(n, shape.params()), ones(groups, n)), 4 * n,
                         "merged");
    Domain<double, Space> exact(problem, {.alpha = 0.7});
    check_gradients(exact, in, random_matrix(groups, shape.params(), gen));
  }
}

// algorithms.md §4.2 / §10: alpha = 1, no mask, identity transform and scores summing to 1 make the base cancel. camex
// rejects that by default; accepted, the output is SMEAR over the experts and the base gradient is zero.
BOOST_AUTO_TEST_CASE(domain_degenerate_base_is_reported) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    auto in = random_inputs(gen);
    for (Eigen::Index b = 0; b < in.scores.rows(); ++b) in.scores.row(b) /= in.scores.row(b).sum();
    Domain<double, Space> strict(problem);
    require_argument_error([&] { run_merge(strict, in); }, "scores",
                           {"camex::Domain::merge", "the base cancels", "DegenerateBase::accept", "every row summing to 1"});
    Domain<double, Space> accepting(problem, {.on_degenerate = DegenerateBase::accept});
    const HostMatrix merged = run_merge(accepting, in);
    BOOST_TEST((merged - in.scores * in.experts).cwiseAbs().maxCoeff() <= 1e-14);
    const auto g = run_backward(accepting, in, random_matrix(groups, shape.params(), gen));
    BOOST_TEST(g.d_base.cwiseAbs().maxCoeff() <= 1e-14, "the base gradient vanishes: " << g.d_base);
  }
}

BOOST_AUTO_TEST_CASE(ties_standard_and_sign_agreement) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const auto in = random_inputs(gen);
    for (const TiesOptions options : {TiesOptions{.density = 0.5}, TiesOptions{.density = 0.3, .election = SignElection::count, .lambda = 1.5},
                                      TiesOptions{.density = 1.0, .normalize = false}}) {
      BOOST_TEST_CONTEXT("density " << options.density) {
        Ties<float, Space> policy(problem, {.options = options}, {.alpha = 0.9});
        require_close<float>(run_merge(policy, in), reference_merge(in, 0.9, ties_factor(in, options), ones(groups, n)),
                             8 * n, "merged");
        Ties<double, Space> exact(problem, {.options = options}, {.alpha = 0.9});
        check_gradients(exact, in, random_matrix(groups, shape.params(), gen));
      }
    }
    // The CAMEx code's variant: agreement of each raw delta's sign with the sign of their sum.
    HostMatrix agree(n, shape.params());
    for (Eigen::Index p = 0; p < agree.cols(); ++p) {
      double sum = 0;
      for (std::size_t i = 0; i < n; ++i) sum += in.experts(i, p) - in.base(0, p);
      for (std::size_t i = 0; i < n; ++i) {
        const double d = in.experts(i, p) - in.base(0, p);
        agree(i, p) = ((d > 0) - (d < 0)) == ((sum > 0) - (sum < 0));
      }
    }
    Ties<double, Space> code(problem, {.variant = TiesVariant::sign_agreement});
    require_close<double>(run_merge(code, in), reference_merge(in, 1.0, agree, ones(groups, n)), 4 * n, "sign agreement");
    check_gradients(code, in, random_matrix(groups, shape.params(), gen));
  }
}

// algorithms.md §10: at an upcycled step 0 every delta is 0, so every TIES mask entry is 1 (sign-agreement variant), the
// merged tensor is the base (the dense layer) for any policy, and the expert gradients are the base's share.
BOOST_AUTO_TEST_CASE(upcycled_step_zero) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    auto in = random_inputs(gen);
    for (std::size_t i = 0; i < n; ++i) in.experts.row(i) = in.base;
    const HostMatrix dense = in.base.replicate(groups, 1);
    Ties<double, Space> code(problem, {.variant = TiesVariant::sign_agreement});
    BOOST_TEST((run_merge(code, in) - dense).cwiseAbs().maxCoeff() == 0.0);
    // With every delta 0 the factor is 1 everywhere, so the expert gradient is sum_b s[b, i] d_merged[b].
    const HostMatrix dm = random_matrix(groups, shape.params(), gen);
    const auto g = run_backward(code, in, dm);
    BOOST_TEST((g.d_experts - in.scores.transpose() * dm).cwiseAbs().maxCoeff() <= 1e-14);
    Ties<double, Space> standard(problem, {.options = {.density = 0.5}});
    BOOST_TEST((run_merge(standard, in) - dense).cwiseAbs().maxCoeff() == 0.0);
    Dare<double, Space> dare(problem);
    BOOST_TEST((run_merge(dare, in) - dense).cwiseAbs().maxCoeff() == 0.0);
  }
}

BOOST_AUTO_TEST_CASE(dare_element_and_expert) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const auto in = random_inputs(gen);
    const double drop = 0.3;
    const HostMatrix keep = dare_keep(in, drop);
    BOOST_TEST(keep.sum() > 0.0);
    BOOST_TEST(keep.sum() < static_cast<double>(keep.size()), "a drop of 0.3 over " << keep.size() << " entries drops some");

    Dare<float, Space> inverse(problem, {.drop = drop});
    require_close<float>(run_merge(inverse, in), reference_merge(in, 1.0, keep / (1 - drop), ones(groups, n)), 4 * n / (1 - drop),
                         "inverse_keep");

    // L1 matching: each expert's kept entries are scaled so the masked delta has the unmasked delta's L1 norm.
    HostMatrix l1 = keep;
    for (std::size_t i = 0; i < n; ++i) {
      const HostMatrix tau = in.experts.row(i) - in.base;
      l1.row(i) *= tau.cwiseAbs().sum() / tau.cwiseAbs().cwiseProduct(keep.row(i)).sum();
    }
    Dare<double, Space> norm(problem, {.drop = drop, .rescale = DareRescale::l1_norm});
    require_close<double>(run_merge(norm, in), reference_merge(in, 1.0, l1, ones(groups, n)), 16 * n, "l1_norm");
    check_gradients(norm, in, random_matrix(groups, shape.params(), gen));

    // Drop2d: whole (group, expert) contributions, drawn at site (tensor, expert, group).
    const CounterRng rng(in.step.seed, in.step.step);
    HostMatrix kappa(groups, n);
    for (std::size_t b = 0; b < groups; ++b)
      for (std::size_t i = 0; i < n; ++i)
        kappa(b, i) = rng.uniform({in.step.stream, static_cast<std::uint32_t>(i), b}) < 0.5f ? 0.0 : 2.0;
    Dare<double, Space> expert(problem, {.drop = 0.5, .granularity = DareGranularity::expert});
    require_close<double>(run_merge(expert, in), reference_merge(in, 1.0, ones(n, shape.params()), kappa), 8 * n, "Drop2d");
    check_gradients(expert, in, random_matrix(groups, shape.params(), gen));

    // Evaluation: no drop unless asked for (mergekit applies DARE at merge time, so in_eval reproduces that).
    PolicyInputs eval = in;
    eval.step.training = false;
    Dare<double, Space> trained(problem, {.drop = drop});
    require_close<double>(run_merge(trained, eval), reference_merge(in, 1.0, ones(n, shape.params()), ones(groups, n)), 4 * n,
                          "eval without drop");
    Dare<double, Space> always(problem, {.drop = drop, .in_eval = true});
    require_close<double>(run_merge(always, eval), reference_merge(in, 1.0, keep / (1 - drop), ones(groups, n)), 8 * n,
                          "eval with in_eval");
  }
}

// Same seed and step: the same masks; another step: other masks.
BOOST_AUTO_TEST_CASE(dare_masks_are_a_function_of_seed_and_step) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    auto in = random_inputs(gen);
    Dare<double, Space> policy(problem, {.drop = 0.5});
    const HostMatrix first = run_merge(policy, in), again = run_merge(policy, in);
    BOOST_TEST((first - again).cwiseAbs().maxCoeff() == 0.0);
    in.step.step += 1;
    BOOST_TEST((run_merge(policy, in) - first).cwiseAbs().maxCoeff() > 0.0);
  }
}

// The base may be one of the experts: tau_j = 0, and the base's gradient lands on expert j.
// A training step's merge reads the rows prepare materialised for the backward; an evaluation step's merge on a
// host space generates them tile by tile (or, unmasked with every group in one register block, merges straight
// from the experts: B = 1 and 3 here, B = 13 generated). Both must give the same bits, so switching a run between
// the two changes nothing. Several tiles and a ragged last one.
BOOST_AUTO_TEST_CASE(training_and_evaluation_merges_agree_bit_for_bit) {
  std::mt19937_64 gen(test_seed());
  static_assert(detail::rows_in_one_block<float> < 13, "B = 13 must take the generated rows");
  for (const std::size_t b : {std::size_t{1}, std::size_t{3}, std::size_t{13}}) {
    const MergeProblem wide{.experts = 5, .groups = b, .shape = {37, 29}};
    PolicyInputs training;
    training.experts = random_matrix(5, wide.shape.params(), gen);
    training.base = random_matrix(1, wide.shape.params(), gen);
    training.scores = random_matrix(b, 5, gen, 0.05, 1.0);
    training.step = {.seed = 99, .step = 4, .stream = 1, .training = true};
    PolicyInputs evaluation = training;
    evaluation.step.training = false;
    const auto same = [&](auto& policy, const char* name) {
      BOOST_TEST_CONTEXT(name << ", B = " << b) {
        BOOST_TEST((run_merge(policy, training) - run_merge(policy, evaluation)).cwiseAbs().maxCoeff() == 0.0);
      }
    };
    Domain<float, Space> domain(wide, {.alpha = 0.5});
    same(domain, "domain");
    Ties<float, Space> ties(wide, {.options = {.density = 0.3}});
    same(ties, "ties");
    Ties<float, Space> agreement(wide, {.variant = TiesVariant::sign_agreement});
    same(agreement, "sign agreement");
    Dare<float, Space> undropped(wide, {.drop = 0.0});  // the mask drawn only in training keeps everything
    same(undropped, "dare, drop 0");
  }
}

// The backward's host kernels work on runs of thousands of entries (the mask adjoint f .* d_R, the base's
// d_R[n] - sum_i d_tau_i); the finite-difference tests use 24 entries, so here the backward of a tensor several
// runs long with a ragged end, against its formulas in double: d_R = C^T d_merged, d_E_i = f_i .* d_R_i,
// d_base = d_R[n] - sum_i d_E_i (into d_E_j when the base is expert j), d_s[b, i] = alpha <d_merged_b, R_i>.
BOOST_AUTO_TEST_CASE(backward_of_long_tensors_against_its_formulas) {
  std::mt19937_64 gen(test_seed());
  const MergeProblem wide{.experts = n, .groups = groups, .shape = {71, 97}};
  const std::size_t params = wide.shape.params();
  PolicyInputs in;
  in.experts = random_matrix(n, params, gen);
  in.base = random_matrix(1, params, gen);
  in.scores = random_matrix(groups, n, gen, 0.05, 1.0);
  in.step = {.seed = 5, .step = 2, .stream = 0, .training = true};
  const HostMatrix d_merged = random_matrix(groups, params, gen);

  const auto check = [&](auto& policy, const PolicyInputs& x, double alpha, bool masked, const char* name) {
    BOOST_TEST_CONTEXT(name) {
      using P = std::remove_reference_t<decltype(policy)>;
      MergeDriver<P> driver(policy);
      driver.prepare(Space{}, x.step, to_device<double>(x.experts), device_or_empty<P>(x.base));
      HostMatrix f = ones(n, params);
      if (masked) f = to_host(policy.mask_factor(Space{}, driver.workspace()));
      const auto g = run_backward(policy, x, d_merged);
      const bool from_expert = x.base.size() == 0;
      const HostMatrix base = from_expert ? HostMatrix(x.experts.row(0)) : x.base;
      const HostMatrix rows = f.cwiseProduct(x.experts - base.replicate(n, 1));
      const HostMatrix d_r = alpha * x.scores.transpose() * d_merged;
      HostMatrix d_e = f.cwiseProduct(d_r);
      const HostMatrix d_b = d_merged.colwise().sum() - d_e.colwise().sum();
      if (from_expert) d_e.row(0) += d_b;
      const auto close = [](const HostMatrix& got, const HostMatrix& want, const char* what) {
        BOOST_TEST((got - want).cwiseAbs().maxCoeff() <= 1e-12 * (1 + want.cwiseAbs().maxCoeff()), what);
      };
      close(g.d_experts, d_e, "d_experts");
      if (!from_expert) close(g.d_base, d_b, "d_base");
      close(g.d_scores, alpha * d_merged * rows.transpose(), "d_scores");
    }
  };
  Domain<double, Space> domain(wide, {.alpha = 0.5});
  check(domain, in, 0.5, false, "domain");
  Domain<double, Space> from_expert(wide, {.alpha = 0.5, .base = BaseSource::expert, .base_expert = 0});
  PolicyInputs no_base = in;
  no_base.base = HostMatrix();
  check(from_expert, no_base, 0.5, false, "domain, base = expert 0");
  Ties<double, Space> ties(wide, {.options = {.density = 0.3}});
  check(ties, in, 1.0, true, "ties");
  Dare<double, Space> dare(wide, {.drop = 0.3});
  check(dare, in, 1.0, true, "dare");
}

BOOST_AUTO_TEST_CASE(base_from_an_expert) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    auto in = random_inputs(gen, false);
    PolicyInputs as_parameter = in;
    as_parameter.base = in.experts.row(1);
    Domain<double, Space> from_expert(problem, {.alpha = 0.6, .base = BaseSource::expert, .base_expert = 1});
    require_close<double>(run_merge(from_expert, in), reference_merge(as_parameter, 0.6, ones(n, shape.params()), ones(groups, n)),
                          4 * n, "base = expert 1");
    check_gradients(from_expert, in, random_matrix(groups, shape.params(), gen));
    Ties<double, Space> ties(problem, {.options = {.density = 0.5}}, {.base = BaseSource::expert, .base_expert = 2});
    check_gradients(ties, in, random_matrix(groups, shape.params(), gen));
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  std::mt19937_64 gen(test_seed());
  const auto in = random_inputs(gen);
  require_argument_error([] { Domain<float, Space>({.experts = 0, .groups = 1, .shape = shape}); }, "problem.experts",
                         {"camex::Domain", "at least one expert"});
  require_argument_error([] { Domain<float, Space>({.experts = 2, .groups = 0, .shape = shape}); }, "problem.groups", {"0"});
  require_argument_error([] { Domain<float, Space>({.experts = 2, .groups = 1, .shape = {0, 3}}); }, "problem.shape",
                         {"0 x 3"});
  require_argument_error([] { Domain<float, Space>(problem, {.alpha = std::nan("")}); }, "options.alpha", {"finite"});
  require_argument_error([] { Domain<float, Space>(problem, {.base = BaseSource::expert, .base_expert = 3}); },
                         "options.base_expert", {"below 3", "given 3"});
  require_argument_error([] { Domain<float, Space>(problem, {.base = BaseSource::propagated}); }, "options.base",
                         {"DynamicChain"});
  require_argument_error([] { Dare<float, Space>(problem, {.drop = 1.0}); }, "dare.drop", {"[0, 1)", "given 1"});
  require_argument_error(
      [] { Dare<float, Space>(problem, {.granularity = DareGranularity::expert, .rescale = DareRescale::l1_norm}); },
      "dare.rescale", {"expert granularity"});

  Domain<float, Space> policy(problem, {.alpha = 0.5});
  const auto workspace = make_workspace<Space>(policy.workspace_bytes());
  const auto experts = to_device<float>(in.experts), base = to_device<float>(in.base), scores = to_device<float>(in.scores);
  Matrix<float, Space> merged("merged", groups, shape.params());
  require_argument_error([&] { policy.merge(Space{}, scores, merged, workspace); }, "this", {"prepare() to have run"});
  require_argument_error([&] { policy.prepare(Space{}, {}, to_device<float>(random_matrix(2, 24, gen)), base, workspace); },
                         "experts", {"camex::Domain::prepare", "[3, 24]", "given [2, 24]"});
  require_argument_error([&] { policy.prepare(Space{}, {}, experts, Matrix<float, Space>(), workspace); }, "base",
                         {"[1, 24]", "given [0, 0]"});
  require_argument_error([&] { policy.prepare(Space{}, {}, experts, base, make_workspace<Space>(64)); }, "workspace",
                         {"workspace_bytes", "given 64 bytes"});
  policy.prepare(Space{}, {}, experts, base, workspace);
  require_argument_error([&] { policy.merge(Space{}, to_device<float>(random_matrix(3, 3, gen)), merged, workspace); },
                         "scores", {"1 <= B <= problem().groups = 2", "given [3, 3]"});
  HostMatrix bad = in.scores;
  bad(1, 2) = std::nan("");
  require_argument_error([&] { policy.merge(Space{}, to_device<float>(bad), merged, workspace); }, "scores",
                         {"finite routing scores", "scores(1, 2) = nan"});
  require_argument_error([&] { policy.merge(Space{}, scores, Matrix<float, Space>("m", 2, 23), workspace); }, "merged",
                         {"given [2, 23]"});
  Matrix<float, Space> d_scores("ds", groups, n), d_experts("de", n, 24), d_base("db", 1, 24);
  require_argument_error(
      [&] { policy.backward(Space{}, scores, to_device<float>(random_matrix(2, 24, gen)), d_scores, d_experts, Matrix<float, Space>(), workspace); },
      "d_base", {"[1, 24]"});
  require_argument_error(
      [&] { policy.backward(Space{}, scores, to_device<float>(random_matrix(1, 24, gen)), d_scores, d_experts, d_base, workspace); },
      "d_merged", {"given [1, 24]"});
  Euclidean<float, Space> smear(problem);
  require_argument_error(
      [&] { smear.prepare(Space{}, {}, experts, base, make_workspace<Space>(smear.workspace_bytes())); }, "base",
      {"merges without a base"});
}

BOOST_AUTO_TEST_CASE(workspace_bytes_is_the_longest_carve) {
  // The soft-merge backward's scratch is not monotone in B (its chunking follows the tile, which shrinks as B
  // grows): at n = 3, G = 40, P = 200000 a batch of fewer groups needs more than all 40 (found by the loop below).
  // workspace_bytes() covers every B <= G, and is exact: one byte less is refused by the backward at B = G.
  std::mt19937_64 gen(test_seed());
  const MergeProblem wide{.experts = 3, .groups = 40, .shape = {1000, 200}};
  const std::size_t params = wide.shape.params();
  std::size_t hungriest = wide.groups;
  for (std::size_t b = 1; b <= wide.groups; ++b)
    if (soft_merge_backward_workspace_bytes<float, Space>(b, wide.experts, params) >
        soft_merge_backward_workspace_bytes<float, Space>(hungriest, wide.experts, params))
      hungriest = b;
  BOOST_TEST_REQUIRE(hungriest < wide.groups);
  Euclidean<float, Space> policy(wide);
  const std::size_t bytes = policy.workspace_bytes();
  const auto workspace = make_workspace<Space>(bytes);
  const auto experts = to_device<float>(random_matrix(wide.experts, params, gen));
  Matrix<float, Space> d_experts("d_experts", wide.experts, params);
  for (const std::size_t b : {hungriest, wide.groups}) {
    const auto scores = to_device<float>(random_matrix(b, wide.experts, gen, 0.05, 1.0));
    Matrix<float, Space> d_scores("d_scores", b, wide.experts);
    policy.prepare(Space{}, {.training = true}, experts, {}, workspace);
    policy.backward(Space{}, scores, to_device<float>(random_matrix(b, params, gen)), d_scores, d_experts, {}, workspace);
  }
  const auto scores = to_device<float>(random_matrix(wide.groups, wide.experts, gen, 0.05, 1.0));
  Matrix<float, Space> d_scores("d_scores", wide.groups, wide.experts);
  const Workspace<Space> short_by_one(workspace.data(), bytes - 1);
  policy.prepare(Space{}, {.training = true}, experts, {}, short_by_one);
  require_argument_error(
      [&] { policy.backward(Space{}, scores, to_device<float>(random_matrix(wide.groups, params, gen)), d_scores, d_experts, {}, short_by_one); },
      "workspace", {"camex::Euclidean", concat("at least ", bytes, " bytes"), concat("given ", bytes - 1, " bytes")});
}

// With a read-back batch on the step, a merge queues its status: the same errors come from the batch's read, a
// merge given other scores settles the queued check at once, a discarded check is forgotten, and the backward
// given the checked scores queues nothing.
BOOST_AUTO_TEST_CASE(a_step_with_a_batch_reports_at_its_read) {
  std::mt19937_64 gen(test_seed());
  const auto in = random_inputs(gen);
  Domain<float, Space> policy(problem, {.alpha = 0.5});
  const auto workspace = make_workspace<Space>(policy.workspace_bytes());
  const auto experts = to_device<float>(in.experts), base = to_device<float>(in.base), scores = to_device<float>(in.scores);
  HostMatrix bad = in.scores;
  bad(1, 2) = std::nan("");
  const auto bad_scores = to_device<float>(bad);
  Matrix<float, Space> merged("merged", groups, shape.params());
  ReadBackBatch<Space> batch;
  const StepContext step{.seed = 5, .read_backs = &batch};

  policy.prepare(Space{}, step, experts, base, workspace);
  policy.merge(Space{}, bad_scores, merged, workspace);
  BOOST_TEST(batch.pending() == 1u, "the status waits for the read");
  require_argument_error([&] { batch.read(Space{}); }, "scores",
                         {"camex::Domain::merge", "finite routing scores", "scores(1, 2) = nan"});

  policy.prepare(Space{}, step, experts, base, workspace);
  policy.merge(Space{}, bad_scores, merged, workspace);
  require_argument_error([&] { policy.merge(Space{}, scores, merged, workspace); }, "scores", {"scores(1, 2) = nan"});
  batch.read(Space{});  // the early settle left nothing for the read

  policy.prepare(Space{}, step, experts, base, workspace);
  policy.merge(Space{}, bad_scores, merged, workspace);
  batch.discard();
  policy.prepare(Space{}, step, experts, base, workspace);  // the discarded check is not settled here
  policy.merge(Space{}, scores, merged, workspace);
  Matrix<float, Space> d_scores("d_scores", groups, n), d_experts("d_experts", n, shape.params()), d_base("d_base", 1, shape.params());
  policy.backward(Space{}, scores, merged, d_scores, d_experts, d_base, workspace);
  BOOST_TEST(batch.pending() == 1u, "the backward given the merge's scores queues nothing");
  batch.read(Space{});
  require_close<float>(to_host(merged), reference_merge(in, 0.5, ones(n, shape.params()), ones(groups, n)), 2.0,
                       "the merge of a step whose checks were queued");

  HostMatrix stochastic = in.scores;
  for (Eigen::Index b = 0; b < stochastic.rows(); ++b) stochastic.row(b) /= stochastic.row(b).sum();
  Domain<float, Space> strict(problem);
  strict.prepare(Space{}, step, experts, base, workspace);
  strict.merge(Space{}, to_device<float>(stochastic), merged, workspace);
  require_argument_error([&] { batch.read(Space{}); }, "scores", {"the base cancels"});
}

/// Where prepare makes no pass over the operands (an evaluation step of a policy without a mask), the merge checks
/// them as it reads them, and a call of the step that reads none of them before handing them on (the
/// coefficients, the rows, a backward with no merge before it) scans them itself: whichever call comes first
/// reports the first bad entry. The tensor spans several tiles of the merge, so entries past the first tile count.
BOOST_AUTO_TEST_CASE(the_first_call_that_reads_the_operands_checks_them) {
  const TensorShape long_shape{64, 100};
  const MergeProblem long_problem{.experts = n, .groups = groups, .shape = long_shape};
  const std::size_t params = long_shape.params(), last = params - 1;
  std::mt19937_64 gen(test_seed());
  const HostMatrix experts = random_matrix(n, params, gen), base = random_matrix(1, params, gen);
  const HostMatrix scores = random_matrix(groups, n, gen, 0.05, 1.0);
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  HostMatrix bad_experts = experts;
  bad_experts(2, last) = inf;
  bad_experts(2, last - 7) = nan;
  bad_experts(1, 0) = 1.5;  // finite: the first bad entry is the NaN
  HostMatrix bad_base = base;
  bad_base(0, last - 1) = -inf;
  const std::string expert_entry = concat("experts(2, ", last - 7, ") = nan");

  const auto check = [&](auto& policy, const HostMatrix& base_in, const HostMatrix& experts_in, const char* argument,
                         const std::string& entry) {
    using P = std::remove_reference_t<decltype(policy)>;
    using T = typename P::scalar_type;
    const auto workspace = make_workspace<Space>(policy.workspace_bytes());
    const auto device_experts = to_device<T>(experts_in);
    const auto device_base = device_or_empty<P>(base_in);
    const auto all_scores = to_device<T>(scores);
    const auto one_group = to_device<T>(HostMatrix(scores.topRows(1)));
    Matrix<T, Space> merged("merged", groups, params), d_scores("d_scores", groups, n), d_experts("d_experts", n, params),
        d_base("d_base", base_in.size() ? 1 : 0, base_in.size() ? params : 0);
    Matrix<T, Space> merged_one("merged_one", 1, params);
    const std::vector<std::pair<const char*, std::function<void()>>> calls = {
        {"merge of one group", [&] { policy.merge(Space{}, one_group, merged_one, workspace); }},
        {"merge of every group", [&] { policy.merge(Space{}, all_scores, merged, workspace); }},
        {"coefficients", [&] { policy.coefficients(Space{}, all_scores, workspace); }},
        {"prepared_rows", [&] { policy.prepared_rows(Space{}, workspace); }},
        {"backward", [&] { policy.backward(Space{}, all_scores, merged, d_scores, d_experts, d_base, workspace); }},
    };
    for (const auto& [what, call] : calls) {
      BOOST_TEST_CONTEXT(what) {
        policy.prepare(Space{}, StepContext{.seed = 1, .step = 2, .training = false}, device_experts, device_base, workspace);
        require_argument_error(call, argument, {"::prepare", "finite values", entry});
      }
    }
  };
  Euclidean<float, Space> euclidean(long_problem);
  check(euclidean, HostMatrix(), bad_experts, "experts", expert_entry);
  Domain<float, Space> domain(long_problem, {.alpha = 0.5});
  check(domain, base, bad_experts, "experts", expert_entry);
  check(domain, bad_base, experts, "base", concat("base(0, ", last - 1, ") = -inf"));
  Domain<double, Space> from_expert(long_problem, {.alpha = 0.5, .base = BaseSource::expert, .base_expert = 2});
  check(from_expert, HostMatrix(), bad_experts, "experts", expert_entry);
}

BOOST_AUTO_TEST_CASE(rejects_non_finite_experts_and_base) {
  std::mt19937_64 gen(test_seed());
  const auto in = random_inputs(gen), no_base = random_inputs(gen, false);
  Euclidean<float, Space> euclidean(problem);
  require_rejects_non_finite(euclidean, no_base);
  Domain<float, Space> domain(problem, {.alpha = 0.5});
  require_rejects_non_finite(domain, in);
  Domain<double, Space> domain_from_expert(problem, {.alpha = 0.5, .base = BaseSource::expert, .base_expert = 0});
  require_rejects_non_finite(domain_from_expert, no_base);
  for (const double density : {1.0, 0.5}) {
    Ties<float, Space> ties(problem, {.options = {.density = density}});
    require_rejects_non_finite(ties, in);
    Ties<float, Space> ties_without_base(problem, {.options = {.density = density}}, {.base = BaseSource::none});
    require_rejects_non_finite(ties_without_base, no_base);
  }
  Ties<float, Space> agreement(problem, {.variant = TiesVariant::sign_agreement});
  require_rejects_non_finite(agreement, in);
  for (const auto rescale : {DareRescale::inverse_keep, DareRescale::l1_norm}) {
    Dare<float, Space> dare(problem, {.drop = 0.3, .rescale = rescale});
    require_rejects_non_finite(dare, in);
  }
  Dare<float, Space> drop2d(problem, {.drop = 0.3, .granularity = DareGranularity::expert});
  require_rejects_non_finite(drop2d, in);

  // A difference that overflows is caught where prepare forms the deltas (the TIES trim reads them).
  Ties<float, Space> ties(problem, {.options = {.density = 0.5}});
  PolicyInputs far = in;
  far.experts(2, 4) = 3e38;
  far.base(0, 4) = -3e38;
  require_argument_error([&] { run_merge(ties, far); }, "experts",
                         {"differences from the base are finite", "experts(2, 4) = 3e+38 and base -3e+38"});
}

BOOST_AUTO_TEST_SUITE_END()
