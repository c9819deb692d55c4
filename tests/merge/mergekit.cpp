// The mergekit façade (camex/merge/mergekit.hpp) against mergekit's algorithm written out here in double from its
// definition (sparsify each delta, weight, elect signs, sum, normalise, scale), with DARE's keep drawn from camex's
// counter-based generator (mergekit's torch.bernoulli draws cannot be reproduced; the rest of the arithmetic can).
// Also: the worked example of docs/policies/ties.md through the façade, the L1 rescale's 1e-7 floor on both sides,
// dare_ties and unscaled DARE as compositions (values and every gradient), the masks read through the public API,
// contradictory settings, and every error path.
#include "camex/merge/dare.hpp"
#include "camex/merge/dare_ties.hpp"
#include "camex/merge/mergekit.hpp"
#include "camex/merge/ties.hpp"

#include "policy_check.hpp"
#include "reference.hpp"
#include "testing.hpp"

#include <cmath>
#include <limits>
#include <span>
#include <vector>

using namespace camex;
using namespace camex::testing;
using mergekit::Model;

namespace {

enum class Method { task_arithmetic, ties, dare_linear, dare_ties };

/// keep[i][p] of DARE at density d_i: the draw camex makes at (tensor, i, p) of step 0.
bool dare_kept(const mergekit::Options& options, std::size_t i, std::size_t p, double density) {
  const CounterRng rng(options.seed, 0);
  return !(rng.uniform({options.stream, static_cast<std::uint32_t>(i), static_cast<std::uint64_t>(p)}) <
           static_cast<float>(1.0 - density));
}

/// mergekit's merge of [1, P] base and [n, P] tensors, in double.
HostMatrix reference(Method method, const HostMatrix& base, const HostMatrix& tensors, const std::vector<Model>& models,
                     const mergekit::Options& options) {
  const std::size_t n = tensors.rows(), params = tensors.cols();
  const bool dare = method == Method::dare_linear || method == Method::dare_ties;
  const bool consensus = method == Method::ties || method == Method::dare_ties;
  const bool normalize = options.normalize.value_or(method == Method::ties);
  std::vector<std::vector<double>> weighted(n, std::vector<double>(params));
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<double> delta(params);
    for (std::size_t p = 0; p < params; ++p) delta[p] = tensors(i, p) - base(0, p);
    std::vector<double> kept(params, 1.0);
    const double density = models[i].density;
    if (method == Method::ties && density < 1) {
      const auto keep = reference_top_k_mask(delta, static_cast<std::size_t>(density * static_cast<double>(params)));
      for (std::size_t p = 0; p < params; ++p) kept[p] = keep[p];
    }
    if (dare)
      for (std::size_t p = 0; p < params; ++p) kept[p] = dare_kept(options, i, p, density) ? 1.0 : 0.0;
    double norm = 0, survivors = 0;
    for (std::size_t p = 0; p < params; ++p) {
      norm += std::abs(delta[p]);
      survivors += std::abs(kept[p] * delta[p]);
    }
    const double scale = dare && options.rescale.value_or(true) && norm >= 1e-7 && survivors >= 1e-7 ? norm / survivors : 1.0;
    for (std::size_t p = 0; p < params; ++p) weighted[i][p] = *models[i].weight * kept[p] * delta[p] * scale;
  }
  HostMatrix merged = base;
  for (std::size_t p = 0; p < params; ++p) {
    double sum = 0, signs = 0;
    for (std::size_t i = 0; i < n; ++i) sum += weighted[i][p];
    const double elected = sum >= 0 ? 1.0 : -1.0;
    double mixed = 0, divisor = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const bool agrees = !consensus || weighted[i][p] * elected > 0;
      mixed += agrees ? weighted[i][p] : 0.0;
      divisor += agrees ? *models[i].weight : 0.0;
      signs += agrees;
    }
    if (consensus ? divisor == 0 : std::abs(divisor) < 1e-8) divisor = 1;
    merged(0, p) += (normalize ? mixed / divisor : mixed) * options.lambda;
  }
  return merged;
}

template <class T>
HostMatrix run(Method method, const HostMatrix& base, const HostMatrix& tensors, const std::vector<Model>& models,
               const mergekit::Options& options) {
  Matrix<T, Space> merged("merged", 1, tensors.cols());
  const auto b = to_device<T>(base), t = to_device<T>(tensors);
  const std::span<const Model> m(models);
  switch (method) {
    case Method::task_arithmetic: mergekit::task_arithmetic(Space{}, b, t, m, options, merged); break;
    case Method::ties: mergekit::ties(Space{}, b, t, m, options, merged); break;
    case Method::dare_linear: mergekit::dare_linear(Space{}, b, t, m, options, merged); break;
    case Method::dare_ties: mergekit::dare_ties(Space{}, b, t, m, options, merged); break;
  }
  return to_host(merged);
}

const char* name(Method m) {
  switch (m) {
    case Method::task_arithmetic: return "task_arithmetic";
    case Method::ties: return "ties";
    case Method::dare_linear: return "dare_linear";
    case Method::dare_ties: return "dare_ties";
  }
  return "";
}

}  // namespace

BOOST_AUTO_TEST_SUITE(mergekit_facade)

// Every method, its defaults and each knob, against the reference: in double to 1e-12 (the two sum the same
// terms in another order and fold lambda and the weights into one coefficient, a few roundings of 1e-16 each on
// values below 50), and in float to 8 (n + 2) u times 50, the bound on the terms' magnitudes here: |delta| <= 2,
// the L1 rescale <= 1 / density <= 4, weights <= 1.2 over a divisor >= 0.3, lambda <= 1.5.
BOOST_AUTO_TEST_CASE(matches_mergekit_written_out) {
  std::mt19937_64 gen(test_seed());
  const std::size_t n = 4, params = 1000;
  const HostMatrix base = random_matrix(1, params, gen), tensors = random_matrix(n, params, gen);
  const std::vector<Model> models{{.weight = 0.7, .density = 0.5}, {.weight = 0.3, .density = 0.9},
                                  {.weight = 1.2, .density = 1.0}, {.weight = 0.4, .density = 0.25}};
  std::vector<Model> whole = models;
  for (auto& m : whole) m.density = 1.0;
  const std::vector<mergekit::Options> settings{
      {}, {.normalize = true, .lambda = 0.8, .seed = 11, .stream = 3}, {.normalize = false, .lambda = 1.5, .rescale = false, .seed = 5}};
  for (const Method method : {Method::task_arithmetic, Method::ties, Method::dare_linear, Method::dare_ties}) {
    for (std::size_t c = 0; c < settings.size(); ++c) {
      auto options = settings[c];
      if (method == Method::task_arithmetic || method == Method::ties) options.rescale.reset();
      const auto& m = method == Method::task_arithmetic ? whole : models;
      BOOST_TEST_CONTEXT(name(method) << ", settings " << c) {
        const HostMatrix expected = reference(method, base, tensors, m, options);
        const double worst = (run<double>(method, base, tensors, m, options) - expected).cwiseAbs().maxCoeff();
        BOOST_TEST(worst <= 1e-12, "double: worst error " << worst);
        const double bound = 8.0 * (n + 2) * unit_roundoff<float> * 50;
        const double worst_float = (run<float>(method, base, tensors, m, options) - expected).cwiseAbs().maxCoeff();
        BOOST_TEST(worst_float <= bound, "float: worst error " << worst_float << " > " << bound);
      }
    }
  }
}

// docs/policies/ties.md's example: weights (2, 1, 1), density 1, the disjoint mean; p5's weighted sum is exactly 0.
// Stated once, the weights give mergekit's answer (the policy needs them as scores and as election weights).
BOOST_AUTO_TEST_CASE(worked_example_of_the_ties_page) {
  HostMatrix tensors(3, 6);
  tensors << 1, -2, 3, 0, 0.5, -1, -1, -1, -1, 4, -0.5, 1, 2, 1, -1, -1, 0.25, 1;
  const std::vector<Model> models{{.weight = 2}, {.weight = 1}, {.weight = 1}};
  const HostMatrix got = run<double>(Method::ties, HostMatrix::Zero(1, 6), tensors, models, {});
  HostMatrix expected(1, 6);
  expected << 4.0 / 3, -5.0 / 3, 3, 4, 1.25 / 3, 1;
  BOOST_TEST((got - expected).cwiseAbs().maxCoeff() <= 1e-15, "got " << got);
}

// The election sums in double: deltas (-1, 1e8, -1e8) sum to 0 in float32 (-1 + 1e8 rounds to 1e8), which would
// elect +; their true sum elects -, so experts 0 and 2 agree and the disjoint mean is -(1 + 1e8) / 2.
BOOST_AUTO_TEST_CASE(election_sums_in_double) {
  float float_sum = -1.0f;
  float_sum += 1e8f;
  float_sum += -1e8f;
  BOOST_TEST_REQUIRE(float_sum == 0.0f);
  HostMatrix tensors(3, 1);
  tensors << -1, 1e8, -1e8;
  const std::vector<Model> models{{.weight = 1}, {.weight = 1}, {.weight = 1}};
  const HostMatrix got = run<float>(Method::ties, HostMatrix::Zero(1, 1), tensors, models, {});
  BOOST_TEST(std::abs(got(0, 0) - (-1.0 - 1e8) / 2) <= 4.0, "got " << got(0, 0));  // float spacing at 5e7 is 4
}

// mergekit leaves a delta unscaled when its L1 norm or its survivors' is below 1e-7; camex sums the norms in
// double and so agrees on either side of the floor (a float32 sum, as mergekit's on float tensors, may land on the
// other side of it when a norm is within float rounding of 1e-7).
BOOST_AUTO_TEST_CASE(l1_rescale_floor) {
  const std::size_t params = 16;
  const mergekit::Options options{.seed = 3};
  const std::vector<Model> models{{.weight = 1.0, .density = 0.5}};
  std::size_t kept = 0;
  for (std::size_t p = 0; p < params; ++p) kept += dare_kept(options, 0, p, 0.5);
  BOOST_TEST_REQUIRE((kept > 0 && kept < params), kept << " of " << params << " kept: pick another seed");
  const HostMatrix base = HostMatrix::Zero(1, params);
  for (const double norm : {0.99e-7, 1.01e-7, 1e-6}) {
    // Every entry alike: the survivors' norm is kept / params of the whole.
    const HostMatrix tensors = HostMatrix::Constant(1, params, norm / params);
    const double survivors = norm * static_cast<double>(kept) / params;
    const bool rescaled = norm >= 1e-7 && survivors >= 1e-7;
    const HostMatrix got = run<double>(Method::dare_linear, base, tensors, models, options);
    for (std::size_t p = 0; p < params; ++p) {
      const double expected = dare_kept(options, 0, p, 0.5) ? tensors(0, p) * (rescaled ? norm / survivors : 1.0) : 0.0;
      BOOST_TEST(std::abs(got(0, p) - expected) <= 1e-22, "norm " << norm << ", p " << p << ": " << got(0, p) << " vs " << expected);
    }
  }
}

// dare_ties and unscaled DARE are compositions: DareTies is MaskSequence<DareMask, TiesMask>, DareRescale::none a
// DARE rescale; their merges with router scores in place of the weights, and every gradient by finite differences.
BOOST_AUTO_TEST_CASE(compositions_and_their_gradients) {
  std::mt19937_64 gen(test_seed());
  const MergeProblem problem{.experts = 3, .groups = 2, .shape = {4, 6}};
  PolicyInputs in;
  in.experts = random_matrix(3, 24, gen);
  in.base = random_matrix(1, 24, gen);
  in.scores = random_matrix(2, 3, gen, 0.05, 1.0);
  in.step = {.seed = 77, .step = 2, .stream = 1, .training = true};
  const HostMatrix d_merged = random_matrix(2, 24, gen);
  for (const auto rescale : {DareRescale::inverse_keep, DareRescale::l1_norm, DareRescale::none}) {
    BOOST_TEST_CONTEXT("rescale " << static_cast<int>(rescale)) {
      DareTies<double, Space> policy(problem, {{.drop = 0.3, .rescale = rescale}, {.options = {.normalize = true}}});
      check_gradients(policy, in, d_merged);
      // Values: m = f1 .* tau with DARE's factor, then the TIES factor of m.
      Dare<double, Space> dare(problem, {.drop = 0.3, .rescale = rescale, .in_eval = true});
      MergeDriver<Dare<double, Space>> dare_driver(dare);
      dare_driver.prepare(Space{}, in.step, to_device<double>(in.experts), to_device<double>(in.base));
      const HostMatrix f1 = to_host(dare.mask_factor(Space{}, dare_driver.workspace()));
      std::vector<std::vector<double>> m(3, std::vector<double>(24));
      for (std::size_t i = 0; i < 3; ++i)
        for (std::size_t p = 0; p < 24; ++p) m[i][p] = f1(i, p) * (in.experts(i, p) - in.base(0, p));
      const auto f2 = reference_ties_factors<double>(m, std::vector<double>{1, 1, 1}, TiesOptions{});
      const HostMatrix got = run_merge(policy, in);
      for (Eigen::Index b = 0; b < 2; ++b)
        for (std::size_t p = 0; p < 24; ++p) {
          double expected = in.base(0, p);
          for (std::size_t i = 0; i < 3; ++i) expected += in.scores(b, i) * f2[i][p] * m[i][p];
          BOOST_TEST(std::abs(got(b, p) - expected) <= 1e-12);
        }
    }
  }
  Dare<double, Space> unscaled(problem, {.drop = 0.3, .rescale = DareRescale::none});
  check_gradients(unscaled, in, d_merged);
  require_rejects_non_finite(unscaled, in);
  DareTies<float, Space> dare_ties(problem, {{.drop = 0.3}, {}});
  require_rejects_non_finite(dare_ties, in);
}

// The masks of a step, read back: the TIES trim and elected signs, and DARE's keep (the factor's non-zeros).
BOOST_AUTO_TEST_CASE(masks_are_readable) {
  std::mt19937_64 gen(test_seed());
  const MergeProblem problem{.experts = 3, .groups = 1, .shape = {5, 8}};
  const HostMatrix experts = random_matrix(3, 40, gen), base = random_matrix(1, 40, gen);
  Ties<double, Space> ties(problem, {.options = {.density = 0.5}, .election_weights = {2, 1, 0.5}});
  MergeDriver<Ties<double, Space>> driver(ties);
  driver.prepare(Space{}, {}, to_device<double>(experts), to_device<double>(base));
  const auto kept = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, ties.kept(Space{}, driver.workspace()));
  const auto signs = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, ties.elected_signs(Space{}, driver.workspace()));
  const std::vector<double> w{2, 1, 0.5};
  for (std::size_t i = 0; i < 3; ++i) {
    std::vector<double> delta(40);
    for (std::size_t p = 0; p < 40; ++p) delta[p] = experts(i, p) - base(0, p);
    const auto expected = reference_top_k_mask(delta, 20);
    for (std::size_t p = 0; p < 40; ++p) BOOST_TEST(kept(i, p) == expected[p]);
  }
  for (std::size_t p = 0; p < 40; ++p) {
    double sum = 0;
    for (std::size_t i = 0; i < 3; ++i) sum += kept(i, p) ? w[i] * (experts(i, p) - base(0, p)) : 0.0;
    BOOST_TEST(static_cast<int>(signs(p)) == (sum >= 0 ? 1 : -1));
  }
  Dare<double, Space> dare(problem, {.drop = 0.4});
  MergeDriver<Dare<double, Space>> dare_driver(dare);
  const StepContext step{.seed = 9, .step = 4, .stream = 2};
  dare_driver.prepare(Space{}, step, to_device<double>(experts), to_device<double>(base));
  const HostMatrix factor = to_host(dare.mask_factor(Space{}, dare_driver.workspace()));
  const CounterRng rng(9, 4);
  for (std::size_t i = 0; i < 3; ++i)
    for (std::size_t p = 0; p < 40; ++p) {
      const bool keep = !(rng.uniform({2, static_cast<std::uint32_t>(i), p}) < 0.4f);
      BOOST_TEST(factor(i, p) == (keep ? 1 / (1 - 0.4) : 0.0));
    }
  Ties<double, Space> agreement(problem, {.variant = TiesVariant::sign_agreement});
  require_argument_error([&] { agreement.kept(Space{}, driver.workspace()); }, "this", {"standard variant"});
  Dare<double, Space> evaluation(problem, {.drop = 0.4});
  MergeDriver<Dare<double, Space>> eval_driver(evaluation);
  eval_driver.prepare(Space{}, {.training = false}, to_device<double>(experts), to_device<double>(base));
  require_argument_error([&] { evaluation.mask_factor(Space{}, eval_driver.workspace()); }, "this",
                         {"elementwise factor", "DARE at evaluation"});
}

BOOST_AUTO_TEST_CASE(rejects_bad_and_contradictory_settings) {
  std::mt19937_64 gen(test_seed());
  const HostMatrix base = random_matrix(1, 10, gen), tensors = random_matrix(2, 10, gen);
  const auto call = [&](Method method, std::vector<Model> models, const mergekit::Options& options = {}) {
    return [=] { run<float>(method, base, tensors, models, options); };
  };
  const std::vector<Model> good{{.weight = 1}, {.weight = 2}};
  require_argument_error(call(Method::ties, {{.weight = 1}}), "models", {"camex::mergekit::ties", "(2)", "given 1 entries"});
  require_argument_error(call(Method::ties, {{.weight = 1}, {.density = 0.5}}), "models[1].weight",
                         {"mergekit requires one"});
  require_argument_error(call(Method::dare_linear, {{.weight = 1}, {.weight = std::nan("")}}), "models[1].weight",
                         {"a finite weight"});
  require_argument_error(call(Method::dare_ties, {{.weight = 1, .density = 0}, {.weight = 1}}), "models[0].density",
                         {"(0, 1]", "given 0"});
  require_argument_error(call(Method::ties, {{.weight = 1, .density = 1.5}, {.weight = 1}}), "models[0].density", {"given 1.5"});
  require_argument_error(call(Method::ties, {{.weight = 1, .density = 0.01}, {.weight = 1}}), "density", {"keeps none"});
  require_argument_error(call(Method::task_arithmetic, {{.weight = 1, .density = 0.5}, {.weight = 1}}), "models[0].density",
                         {"task_arithmetic keeps every entry"});
  require_argument_error(call(Method::ties, good, {.rescale = true}), "options.rescale", {"L1-rescale the magnitude trim"});
  require_argument_error(call(Method::task_arithmetic, good, {.rescale = true}), "options.rescale", {"drops nothing"});
  require_argument_error(call(Method::dare_ties, good, {.lambda = std::numeric_limits<double>::infinity()}),
                         "options.lambda", {"a finite scale"});
  HostMatrix bad = tensors;
  bad(1, 3) = std::nan("");
  require_argument_error([&] { run<float>(Method::ties, base, bad, good, {}); }, "tensors",
                         {"camex::mergekit::ties", "tensors(1, 3) = nan"});
  HostMatrix bad_base = base;
  bad_base(0, 2) = -std::numeric_limits<double>::infinity();
  require_argument_error([&] { run<float>(Method::dare_linear, bad_base, tensors, good, {}); }, "base", {"base(0, 2) = -inf"});
  require_argument_error(
      [&] {
        Matrix<float, Space> merged("m", 1, 9);
        mergekit::ties(Space{}, to_device<float>(base), to_device<float>(tensors), std::span<const Model>(good), {}, merged);
      },
      "merged", {"[1, P]", "given [1, 9]"});

  // The policies' own contradictions are refused when they are built.
  const MergeProblem problem{.experts = 2, .groups = 1, .shape = {2, 5}};
  require_argument_error([&] { Ties<float, Space>(problem, {.options = {.density = 0.5}, .densities = {0.5, 0.3}}); },
                         "mask.densities", {"not both"});
  require_argument_error([&] { Ties<float, Space>({.experts = 2049, .groups = 1, .shape = {2, 5}}, {}); }, "problem.experts",
                         {"at most 2048 experts", "given 2049 experts"});
  require_argument_error([&] { Ties<float, Space>(problem, {.densities = {0.5}}); }, "mask.densities",
                         {"one density per expert (2)"});
  require_argument_error([&] { Ties<float, Space>(problem, {.densities = {0.5, 0.05}}); }, "density", {"keeps none"});
  require_argument_error([&] { Ties<float, Space>(problem, {.election_weights = {1, std::nan("")}}); }, "weights",
                         {"weights[1] = nan"});
  require_argument_error([&] { Ties<float, Space>(problem, {.election_weights = {1, 2, 3}}); }, "weights",
                         {"one weight per expert (2)"});
  require_argument_error([&] { Ties<float, Space>(problem, {.options = {.lambda = std::nan("")}}); }, "options.lambda",
                         {"a finite scale"});
  require_argument_error([&] { Ties<float, Space>(problem, {.options = {.density = 0.05}}); }, "density", {"keeps none"});
  require_argument_error(
      [&] { Ties<float, Space>(problem, {.variant = TiesVariant::sign_agreement, .options = {.density = 0.5}}); },
      "mask.options", {"sign_agreement"});
  require_argument_error(
      [&] { Ties<float, Space>(problem, {.variant = TiesVariant::sign_agreement, .election_weights = {1, 2}}); },
      "mask.election_weights", {"no weights"});
  require_argument_error([&] { Dare<float, Space>(problem, {.drop = 0.2, .drops = {0.1, 0.2}}); }, "dare.drops",
                         {"not both"});
  require_argument_error([&] { Dare<float, Space>(problem, {.drops = {0.1}}); }, "dare.drops", {"per expert (2)"});
  require_argument_error([&] { Dare<float, Space>(problem, {.drops = {0.1, 1.0}}); }, "dare.drops[1]", {"[0, 1)"});
  require_argument_error(
      [&] { Dare<float, Space>(problem, {.drops = {0.1, 0.2}, .granularity = DareGranularity::expert}); }, "dare.drops",
      {"expert granularity"});
  require_argument_error(
      [&] { DareTies<float, Space>(problem, {{}, {.variant = TiesVariant::sign_agreement}}); }, "mask.second",
      {"raw deltas"});
}

BOOST_AUTO_TEST_SUITE_END()
