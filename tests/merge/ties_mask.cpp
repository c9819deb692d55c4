// The TIES mask axis against mergekit's semantics: cases worked by hand on a 3 x 6 example (sign election by sum
// and by count, weights, normalize, lambda, the trim with its index tie-break, columns with no agreeing expert),
// asserted exactly; random cases against a plain host implementation; and the error paths.
#include "camex/merge/ties_mask.hpp"

#include "reference.hpp"
#include "testing.hpp"

#include <cmath>

#include <limits>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

// Three experts' deltas over six parameters, chosen so that every rule matters somewhere: p2 is elected + by sum
// and - by count, p3 has a zero delta (never agrees), p5 sums to exactly 0 when expert 0 weighs 2.
const std::vector<std::vector<double>> tau = {{1, -2, 3, 0, 0.5, -1}, {-1, -1, -1, 4, -0.5, 1}, {2, 1, -1, -1, 0.25, 1}};

template <class T>
std::vector<std::vector<double>> factors(const std::vector<std::vector<double>>& deltas, std::vector<double> weights,
                                         const TiesOptions& options) {
  const std::size_t n = deltas.size(), p = deltas[0].size();
  HostMatrix host(n, p);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < p; ++j) host(i, j) = deltas[i][j];
  Matrix<T, Space> factor("factor", n, p);
  ties_mask(Space{}, to_device<T>(host), std::span<const double>(weights), options, factor,
            make_workspace<Space>(ties_mask_workspace_bytes<T, Space>(n, p)));
  const HostMatrix f = to_host(factor);
  std::vector<std::vector<double>> out(n, std::vector<double>(p));
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < p; ++j) out[i][j] = f(i, j);
  return out;
}

/// mergekit's merged delta when the routing scores equal the weights: sum_i w_i f_i tau_i.
std::vector<double> merged(const std::vector<std::vector<double>>& f, const std::vector<double>& w) {
  std::vector<double> m(f[0].size(), 0.0);
  for (std::size_t i = 0; i < f.size(); ++i)
    for (std::size_t j = 0; j < m.size(); ++j) m[j] += w[i] * f[i][j] * tau[i][j];
  return m;
}

void require_equal(const std::vector<double>& got, const std::vector<double>& expected, const char* what) {
  for (std::size_t j = 0; j < expected.size(); ++j)
    BOOST_TEST(got[j] == expected[j], what << " at parameter " << j << ": " << got[j] << " != " << expected[j]);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(ties_mask_suite)

BOOST_AUTO_TEST_CASE(mergekit_cases_by_hand) {
  const std::vector<double> ones = {1, 1, 1};
  // Sum election, equal weights: p0 +, agree {0, 2}: (1 + 2) / 2; p1 -, {0, 1}: -3 / 2; p2 + (3 - 1 - 1 = 1),
  // {0}: 3; p3 +, {1} (the zero never agrees): 4; p4 +, {0, 2}: 0.75 / 2; p5 +, {1, 2}: 2 / 2.
  const auto a = factors<float>(tau, ones, {});
  require_equal(a[0], {0.5, 0.5, 1, 0, 0.5, 0}, "sum election, factors of expert 0");
  require_equal(a[1], {0, 0.5, 0, 1, 0, 0.5}, "sum election, factors of expert 1");
  require_equal(a[2], {0.5, 0, 0, 0, 0.5, 0.5}, "sum election, factors of expert 2");
  require_equal(merged(a, ones), {1.5, -1.5, 3, 4, 0.375, 1}, "sum election, merged delta");

  // Count election: p2 has signs (+, -, -) so elects -, {1, 2}: -2 / 2; p3's vote (0, +, -) ties and elects +.
  require_equal(merged(factors<float>(tau, ones, {.election = SignElection::count}), ones), {1.5, -1.5, -1, 4, 0.375, 1},
                "count election, merged delta");

  // Weights (2, 1, 1): elections on weighted deltas, divisor = weight of the agreeing experts. p0: (2*1 + 2) / 3;
  // p1: (2*-2 - 1) / 3; p2: 2*3 / 2; p3: 4; p4: (2*0.5 + 0.25) / 3; p5: the weighted sum is exactly 0, elects +,
  // {1, 2}: 2 / 2.
  const std::vector<double> w = {2, 1, 1};
  const auto c = factors<double>(tau, w, {});
  require_equal(c[0], {1.0 / 3, 1.0 / 3, 0.5, 0, 1.0 / 3, 0}, "weighted, factors of expert 0");
  require_equal(c[2], {1.0 / 3, 0, 0, 0, 1.0 / 3, 0.5}, "weighted, factors of expert 2");

  // No disjoint mean, lambda 0.5: every agreeing entry gets 0.5.
  require_equal(merged(factors<float>(tau, ones, {.normalize = false, .lambda = 0.5}), ones), {1.5, -1.5, 1.5, 2, 0.375, 1},
                "normalize off, lambda 0.5, merged delta");

  // Trim at density 0.5 keeps 3 of 6 per expert, ties at the threshold to the lowest index: expert 0 keeps
  // p2, p1, p0 (p0 and p5 tie at 1); expert 1 keeps p3, p0, p1 (four tie at 1); expert 2 keeps p0, p1, p2.
  // p4 and p5 are then trimmed everywhere: no expert agrees, divisor 0 -> 1, merged 0.
  const auto e = factors<float>(tau, ones, {.density = 0.5});
  require_equal(merged(e, ones), {1.5, -1.5, 3, 4, 0, 0}, "trim 0.5, merged delta");
  require_equal(e[1], {0, 0.5, 0, 1, 0, 0}, "trim 0.5, factors of expert 1");
}

// Random deltas against a plain host implementation of the same rules (mergekit's), both in double for the
// elections; the factors lambda / divisor are the same double rounded to T, so they must match exactly.
BOOST_AUTO_TEST_CASE(matches_host_reference) {
  std::mt19937_64 gen(test_seed());
  BOOST_TEST_CONTEXT("backend " << space_name << ", CAMEX_TEST_SEED=" << test_seed()) {
    const std::size_t n = 5, p = 3001;
    std::uniform_real_distribution<double> weight(0.2, 2.0);
    // Tied deltas (a few magnitudes) put many entries at each trim's threshold, where the lowest indices are kept.
    for (const bool tied : {false, true})
    for (const auto& options : {TiesOptions{.density = 0.3}, TiesOptions{.density = 0.3, .election = SignElection::count},
                                TiesOptions{.density = 1.0, .normalize = false, .lambda = 0.7}}) {
      std::vector<std::vector<double>> deltas(n, std::vector<double>(p));
      std::vector<double> w(n);
      for (auto& x : w) x = weight(gen);
      const HostMatrix d = rounded<float>(random_matrix(n, p, gen));
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < p; ++j) deltas[i][j] = tied ? 0.25 * std::round(4 * d(i, j)) : d(i, j);
      const auto got = factors<float>(deltas, w, options);

      const auto expected = reference_ties_factors<float>(deltas, w, options);
      std::size_t mismatches = 0;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < p; ++j) mismatches += got[i][j] != expected[i][j];
      BOOST_TEST(mismatches == 0u, "density " << options.density << (tied ? ", tied deltas" : "") << ": " << mismatches
                                              << " factors differ");
    }
  }
}

// The agreement test decides sign(w) tau e > 0 in T for weights of at least 2^-925 in magnitude and on the double
// product w tau e below that, where the product of a tiny weight and a tiny delta can round to 0 and so not agree:
// weights of both signs, 0, and either side of the boundary, with deltas from 1e-44 to 1e30 in magnitude, against
// the host reference, which always forms the double product.
BOOST_AUTO_TEST_CASE(weights_of_any_sign_and_magnitude) {
  std::mt19937_64 gen(test_seed());
  BOOST_TEST_CONTEXT("backend " << space_name << ", CAMEX_TEST_SEED=" << test_seed()) {
    const std::vector<double> w = {1.3, -0.7, 0.0, 1e-300, -0x1p-925, 0x1p-926, -1e-310};
    const std::size_t n = w.size(), p = 2000;
    std::uniform_real_distribution<double> exponent(-44.0, 30.0);
    std::bernoulli_distribution negative(0.5);
    std::vector<std::vector<double>> deltas(n, std::vector<double>(p));
    for (auto& row : deltas)
      for (auto& x : row) x = static_cast<float>((negative(gen) ? -1.0 : 1.0) * std::pow(10.0, exponent(gen)));
    for (const auto& options : {TiesOptions{.density = 0.6}, TiesOptions{.density = 0.6, .election = SignElection::count},
                                TiesOptions{.density = 1.0, .normalize = false}}) {
      const auto got = factors<float>(deltas, w, options);
      const auto expected = reference_ties_factors<float>(deltas, w, options);
      std::size_t mismatches = 0, agreeing_tiny = 0;
      for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < p; ++j) {
          mismatches += got[i][j] != expected[i][j];
          agreeing_tiny += i >= 3 && expected[i][j] != 0;
        }
      BOOST_TEST(mismatches == 0u, "density " << options.density << ": " << mismatches << " factors differ");
      BOOST_TEST(agreeing_tiny > 0u, "the tiny weights' experts agree somewhere, so both paths are exercised");
    }
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  const char* fn = "camex::ties_mask";
  Matrix<float, Space> deltas("deltas", 3, 6), factor("factor", 3, 6);
  Kokkos::deep_copy(deltas, 1.0f);
  const auto workspace = make_workspace<Space>(ties_mask_workspace_bytes<float, Space>(3, 6));
  const std::vector<double> ones = {1, 1, 1}, two = {1, 1};
  require_argument_error([&] { ties_mask(Space{}, deltas, std::span<const double>(two), {}, factor, workspace); }, "weights",
                         {fn, "one weight per expert (3)", "given 2 weights"});
  const std::vector<double> bad = {1, std::nan(""), 1};
  require_argument_error([&] { ties_mask(Space{}, deltas, std::span<const double>(bad), {}, factor, workspace); }, "weights",
                         {"finite weights", "weights[1] = nan"});
  require_argument_error([&] { ties_mask(Space{}, deltas, std::span<const double>(ones), {.density = 0.1}, factor, workspace); },
                         "density", {"at least 1/6", "keeps none"});
  require_argument_error(
      [&] { ties_mask(Space{}, deltas, std::span<const double>(ones), {.lambda = std::nan("")}, factor, workspace); },
      "options.lambda", {"a finite scale"});
  require_argument_error(
      [&] { ties_mask(Space{}, deltas, std::span<const double>(ones), {}, Matrix<float, Space>("f", 3, 5), workspace); },
      "factor", {"[3, 6]", "given [3, 5]"});
  require_argument_error([&] { ties_mask(Space{}, deltas, std::span<const double>(ones), {}, deltas, workspace); }, "factor",
                         {"disjoint from 'deltas'"});
  require_argument_error(
      [&] { ties_mask(Space{}, deltas, std::span<const double>(ones), {}, factor, make_workspace<Space>(16)); }, "workspace",
      {"bytes (ask the *_workspace_bytes query)"});
  {
    const std::size_t many = detail::ties_max_experts + 1;
    Matrix<float, Space> wide("wide", many, 2), wide_factor("wide_factor", many, 2);
    const std::vector<double> many_ones(many, 1.0);
    require_argument_error(
        [&] {
          ties_mask(Space{}, wide, std::span<const double>(many_ones), {}, wide_factor,
                    make_workspace<Space>(ties_mask_workspace_bytes<float, Space>(many, 2)));
        },
        "deltas", {fn, "at most 2048 experts", "given 2049 experts"});
  }
  for (const double density : {1.0, 0.5}) {
    Kokkos::deep_copy(Kokkos::subview(deltas, 2, 4), std::numeric_limits<float>::infinity());
    require_argument_error(
        [&] { ties_mask(Space{}, deltas, std::span<const double>(ones), {.density = density}, factor, workspace); },
        "deltas", {fn, "finite values", "deltas(2, 4) = inf"});
    Kokkos::deep_copy(Kokkos::subview(deltas, 1, 5), std::nanf(""));
    require_argument_error(
        [&] { ties_mask(Space{}, deltas, std::span<const double>(ones), {.density = density}, factor, workspace); },
        "deltas", {"deltas(1, 5) = nan"});
    Kokkos::deep_copy(deltas, 1.0f);
  }
}

BOOST_AUTO_TEST_SUITE_END()
