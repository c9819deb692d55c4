// The noisy top-k gate: forward (scores and balancing loss) against a double reference that draws the same noise;
// every gradient (router inputs, both weight matrices, through the softmax, the noise and the Normal-CDF load)
// against central finite differences in double, away from ties; determinism; the fixed router; error paths.
#include "camex/route/noisy_top_k.hpp"

#include "finite_difference.hpp"
#include "testing.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

struct Reference {
  HostMatrix scores;
  double loss;
};

double cv_squared(const Eigen::VectorXd& v) {
  const auto n = static_cast<double>(v.size());
  if (v.size() < 2) return 0;
  const double mean = v.mean(), var = (v.array() - mean).square().sum() / (n - 1);
  return var / (mean * mean + 1e-10);
}

/// algorithms.md §2.1 written out plainly in double, with the gate's noise sites.
Reference reference(const HostMatrix& x, const HostMatrix& w_gate, const HostMatrix& w_noise, const NoisyTopKOptions& o,
                    const StepContext& step) {
  const Eigen::Index groups = x.rows(), n = w_gate.rows();
  const std::size_t k = o.k == 0 ? static_cast<std::size_t>(n) : o.k;
  const bool noisy = step.training && o.noisy;
  const CounterRng rng(step.seed, step.step);
  HostMatrix scores = HostMatrix::Zero(groups, n), load = HostMatrix::Zero(groups, n);
  for (Eigen::Index g = 0; g < groups; ++g) {
    std::vector<double> clean(n), sigma(n), logit(n);
    for (Eigen::Index j = 0; j < n; ++j) {
      clean[j] = x.row(g).dot(w_gate.row(j));
      const double raw = x.row(g).dot(w_noise.row(j));
      sigma[j] = std::log1p(std::exp(raw)) + o.noise_floor;
      const double eps = rng.normal({step.stream, static_cast<std::uint32_t>(j), step.first_group + static_cast<std::uint64_t>(g)});
      logit[j] = noisy ? clean[j] + eps * sigma[j] : clean[j];
    }
    std::vector<int> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logit[a] > logit[b]; });
    double total = 0;
    for (std::size_t r = 0; r < k; ++r) total += std::exp(logit[order[r]]);
    for (std::size_t r = 0; r < k; ++r) scores(g, order[r]) = std::exp(logit[order[r]]) / total;
    for (Eigen::Index j = 0; j < n; ++j) {
      if (!(noisy && k < static_cast<std::size_t>(n))) {
        load(g, j) = scores(g, j) > 0;
        continue;
      }
      const double theta_in = logit[order[k]], theta_out = logit[order[k - 1]];
      const double theta = logit[j] > theta_in ? theta_in : theta_out;
      load(g, j) = 0.5 * std::erfc(-(clean[j] - theta) / sigma[j] / std::sqrt(2.0));
    }
  }
  const Eigen::VectorXd importance = scores.colwise().sum().transpose(), l = load.colwise().sum().transpose();
  return {scores, o.balance_coefficient * (cv_squared(importance) + cv_squared(l))};
}

struct Run {
  HostMatrix scores;
  double loss;
};

template <class T>
void set_weights(NoisyTopKGate<T, Space>& gate, const HostMatrix& w_gate, const HostMatrix& w_noise) {
  Kokkos::deep_copy(gate.gate_weights(), to_device<T>(w_gate));
  Kokkos::deep_copy(gate.noise_weights(), to_device<T>(w_noise));
}

template <class T>
Run forward(NoisyTopKGate<T, Space>& gate, const StepContext& step, const Matrix<T, Space>& x,
               const Workspace<Space>& workspace) {
  Matrix<T, Space> scores("scores", x.extent(0), gate.experts());
  const double loss = gate.forward(Space{}, step, x, scores, workspace);
  return {to_host(scores), loss};
}

struct Case {
  const char* name;
  NoisyTopKOptions options;
  bool training;
};

std::vector<Case> cases() {
  return {{"k < n, noisy, training", {.k = 2, .balance_coefficient = 0.7}, true},
          {"k = n (dense), noisy, training", {.k = 0, .balance_coefficient = 0.7}, true},
          {"k < n, evaluation", {.k = 3, .balance_coefficient = 0.7}, false},
          {"k < n, no noise", {.k = 2, .noisy = false, .balance_coefficient = 0.7}, true}};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(noisy_top_k)

BOOST_AUTO_TEST_CASE(forward_matches_the_definition) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = 9, inputs = 13, n = 5;
    for (const auto& c : cases()) {
      BOOST_TEST_CONTEXT(c.name) {
        const HostMatrix x = rounded<float>(random_matrix(groups, inputs, gen));
        const HostMatrix wg = rounded<float>(random_matrix(n, inputs, gen, -0.5, 0.5));
        const HostMatrix wn = rounded<float>(random_matrix(n, inputs, gen, -0.5, 0.5));
        const StepContext step{.seed = 11, .step = 3, .stream = 4, .training = c.training};
        const Reference expected = reference(x, wg, wn, c.options, step);
        NoisyTopKGate<double, Space> gate(inputs, n, groups, c.options);
        set_weights(gate, wg, wn);
        const auto workspace = make_workspace<Space>(gate.workspace_bytes());
        const auto got = forward(gate, step, to_device<double>(x), workspace);
        // Double throughout: dot products of 13 terms, a softmax and an erfc; a few hundred roundings at most.
        BOOST_TEST((got.scores - expected.scores).cwiseAbs().maxCoeff() <= 1e-13);
        BOOST_TEST(std::abs(got.loss - expected.loss) <= 1e-12 * std::max(1.0, std::abs(expected.loss)));
        BOOST_TEST((got.scores.rowwise().sum().array() - 1).abs().maxCoeff() <= 1e-14);
        const std::size_t k = c.options.k == 0 ? n : c.options.k;
        for (Eigen::Index g = 0; g < got.scores.rows(); ++g)
          BOOST_TEST(static_cast<std::size_t>((got.scores.row(g).array() > 0).count()) == k);
        // Float: the same up to float rounding of inputs held in float.
        NoisyTopKGate<float, Space> gate_f(inputs, n, groups, c.options);
        set_weights(gate_f, wg, wn);
        const auto got_f = forward(gate_f, step, to_device<float>(x), make_workspace<Space>(gate_f.workspace_bytes()));
        BOOST_TEST((got_f.scores - expected.scores).cwiseAbs().maxCoeff() <= 1e-6);
      }
    }
  }
}

// The gradient of L = <d_scores, scores> + d_loss * loss with respect to the router inputs and both weight
// matrices, by central differences in double with the noise held fixed (same step).
BOOST_AUTO_TEST_CASE(backward_matches_finite_differences) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = 6, inputs = 7, n = 5;
    for (const auto& c : cases()) {
      BOOST_TEST_CONTEXT(c.name) {
        const HostMatrix x = random_matrix(groups, inputs, gen);
        const HostMatrix wg = random_matrix(n, inputs, gen, -0.8, 0.8), wn = random_matrix(n, inputs, gen, -0.8, 0.8);
        const HostMatrix d_scores = random_matrix(groups, n, gen);
        const double d_loss = 1.3;
        const StepContext step{.seed = 5, .step = 1, .stream = 2, .training = c.training};
        NoisyTopKGate<double, Space> gate(inputs, n, groups, c.options);
        const auto workspace = make_workspace<Space>(gate.workspace_bytes());
        HostMatrix xm = x, gm = wg, nm = wn;
        const auto objective = [&] {
          set_weights(gate, gm, nm);
          const auto r = forward(gate, step, to_device<double>(xm), workspace);
          return (r.scores.array() * d_scores.array()).sum() + d_loss * r.loss;
        };
        objective();  // the forward the backward below differentiates
        Matrix<double, Space> d_x("d_x", groups, inputs);
        gate.backward(Space{}, to_device<double>(d_scores), d_loss, d_x, workspace);
        const auto params = gate.parameters();
        BOOST_REQUIRE(params.size() == 2u);
        // Parameters are [n, I] row-major, the layout of gm and nm.
        const HostMatrix got_g = Eigen::Map<const HostMatrix>(host_values(params[0].gradient).data(), n, inputs);
        const HostMatrix got_n = Eigen::Map<const HostMatrix>(host_values(params[1].gradient).data(), n, inputs);

        GradientCheck check(objective);
        check.matrix(xm, to_host(d_x));
        check.matrix(gm, got_g);
        check.matrix(nm, got_n);
        const double worst = check.worst(), scale = check.scale();
        // Central differences of a smooth function (away from reorderings, which random inputs do not meet within
        // h): truncation O(h^2 f''') and rounding O(eps |f| / h), about 1e-9 here; the bound leaves a factor 100.
        BOOST_TEST(worst <= 1e-7 * std::max(1.0, scale), "worst " << worst << " of gradients up to " << scale);
        BOOST_TEST(scale > 1e-3);  // the objective does move: the check is not of zeros
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(same_seed_same_scores_other_step_other_noise) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = 4, inputs = 6, n = 4;
    const auto x = to_device<float>(random_matrix(groups, inputs, gen));
    NoisyTopKGate<float, Space> gate(inputs, n, groups, {.k = 2, .init_std = 0.5}, 9);
    const auto workspace = make_workspace<Space>(gate.workspace_bytes());
    const StepContext step{.seed = 1, .step = 7, .stream = 0, .training = true};
    const auto a = forward(gate, step, x, workspace), b = forward(gate, step, x, workspace);
    BOOST_TEST((a.scores - b.scores).cwiseAbs().maxCoeff() == 0.0);
    BOOST_TEST(a.loss == b.loss);
    const auto other = forward(gate, StepContext{.seed = 1, .step = 8, .stream = 0, .training = true}, x, workspace);
    BOOST_TEST((a.scores - other.scores).cwiseAbs().maxCoeff() > 0.0);
    // The same initial draw for the same seed.
    NoisyTopKGate<float, Space> twin(inputs, n, groups, {.k = 2, .init_std = 0.5}, 9);
    BOOST_TEST((to_host(twin.gate_weights()) - to_host(gate.gate_weights())).cwiseAbs().maxCoeff() == 0.0);
    BOOST_TEST(to_host(gate.gate_weights()).cwiseAbs().maxCoeff() > 0.0);
  }
}

// A process training on a share of the batch (data parallelism) draws, for its groups, the noise the whole batch
// draws for them: its first group's index in the batch keys the draws.
BOOST_AUTO_TEST_CASE(a_share_of_the_groups_draws_what_the_whole_batch_draws) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = 5, first = 2, inputs = 6, n = 4;
    const HostMatrix x = random_matrix(groups, inputs, gen);
    NoisyTopKGate<double, Space> whole(inputs, n, groups, {.k = 2, .init_std = 0.5}, 9);
    NoisyTopKGate<double, Space> share(inputs, n, groups - first, {.k = 2, .init_std = 0.5}, 9);
    const StepContext step{.seed = 1, .step = 7, .stream = 3, .training = true};
    StepContext shared = step;
    shared.first_group = first;
    const auto all = forward(whole, step, to_device<double>(x), make_workspace<Space>(whole.workspace_bytes()));
    const auto part = forward(share, shared, to_device<double>(HostMatrix(x.bottomRows(groups - first))),
                              make_workspace<Space>(share.workspace_bytes()));
    BOOST_TEST((all.scores.bottomRows(groups - first) - part.scores).cwiseAbs().maxCoeff() == 0.0);
    const auto unshifted = forward(share, step, to_device<double>(HostMatrix(x.bottomRows(groups - first))),
                                   make_workspace<Space>(share.workspace_bytes()));
    BOOST_TEST((unshifted.scores - part.scores).cwiseAbs().maxCoeff() > 0.0);  // the key does matter
  }
}

// A fixed router lists no parameters and leaves its weights alone, but still passes the gradient to its inputs.
BOOST_AUTO_TEST_CASE(fixed_router_is_frozen) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    const std::size_t groups = 3, inputs = 5, n = 4;
    NoisyTopKGate<double, Space> fixed(inputs, n, groups, {.trainable = false, .init_std = 0.5}, 3);
    BOOST_TEST(fixed.parameters().empty());
    const HostMatrix before = to_host(fixed.gate_weights());
    const auto workspace = make_workspace<Space>(fixed.workspace_bytes());
    forward(fixed, StepContext{.training = true}, to_device<double>(random_matrix(groups, inputs, gen)), workspace);
    Matrix<double, Space> d_x("d_x", groups, inputs);
    fixed.backward(Space{}, to_device<double>(random_matrix(groups, n, gen)), 1.0, d_x, workspace);
    BOOST_TEST(to_host(d_x).cwiseAbs().maxCoeff() > 0.0);
    BOOST_TEST((to_host(fixed.gate_weights()) - before).cwiseAbs().maxCoeff() == 0.0);
  }
}

BOOST_AUTO_TEST_CASE(rejects_bad_arguments) {
  CAMEX_TEST_CONTEXT() {
    using Gate = NoisyTopKGate<float, Space>;
    require_argument_error([] { Gate(0, 4, 2); }, "inputs", {"0"});
    require_argument_error([] { Gate(3, 0, 2); }, "experts", {"between 1 and 64", "0"});
    require_argument_error([] { Gate(3, 65, 2); }, "experts", {"65"});
    require_argument_error([] { Gate(3, 4, 0); }, "max_groups", {"0"});
    require_argument_error([] { Gate(3, 4, 2, {.k = 5}); }, "options.k", {"at most the expert count 4", "5"});
    require_argument_error([] { Gate(3, 4, 2, {.noise_floor = 0}); }, "options.noise_floor", {"positive"});
    require_argument_error([] { Gate(3, 4, 2, {.balance_coefficient = -1}); }, "options.balance_coefficient", {"-1"});
    require_argument_error([] { Gate(3, 4, 2, {.init_std = NAN}); }, "options.init_std", {"nan"});
    {  // a gate for a layout takes its groups from it: S = 2 sequences of 2 segments
      const RoutingLayout layout{.sequences = 2, .length = 6, .granularity = Granularity::causal_segment, .segment = 3};
      Gate for_layout(3, 4, layout);
      const auto ws = make_workspace<Space>(for_layout.workspace_bytes());
      Matrix<float, Space> scores("scores", 5, 4);
      require_argument_error([&] { for_layout.forward(Space{}, {}, Matrix<float, Space>("x", 5, 3), scores, ws); },
                             "routed", {"at most max_groups = 4 rows"});
    }

    Gate gate(3, 4, 2);
    const auto workspace = make_workspace<Space>(gate.workspace_bytes());
    Matrix<float, Space> x("x", 2, 3), scores("scores", 2, 4), d_x("d_x", 2, 3);
    require_argument_error([&] { gate.backward(Space{}, scores, 0.0, d_x, workspace); }, "this", {"no forward"});
    require_argument_error([&] { gate.forward(Space{}, {}, Matrix<float, Space>("x", 3, 3), Matrix<float, Space>("s", 3, 4), workspace); },
                           "routed", {"at most max_groups = 2", "[3, 3]"});
    require_argument_error([&] { gate.forward(Space{}, {}, Matrix<float, Space>("x", 2, 4), scores, workspace); }, "routed",
                           {"[2, 3]", "[2, 4]"});
    require_argument_error([&] { gate.forward(Space{}, {}, x, Matrix<float, Space>("s", 2, 3), workspace); }, "scores",
                           {"[2, 4]", "[2, 3]"});
    require_argument_error([&] { gate.forward(Space{}, {}, x, scores, make_workspace<Space>(8)); }, "workspace",
                           {"8 bytes"});
    gate.forward(Space{}, {}, x, scores, workspace);
    require_argument_error([&] { gate.backward(Space{}, Matrix<float, Space>("d", 1, 4), 0.0, d_x, workspace); },
                           "d_scores", {"[2, 4]", "[1, 4]"});
    require_argument_error([&] { gate.backward(Space{}, scores, 0.0, Matrix<float, Space>("d", 2, 2), workspace); },
                           "d_routed", {"[2, 3]", "[2, 2]"});
    require_argument_error([&] { gate.backward(Space{}, scores, INFINITY, d_x, workspace); }, "d_loss", {"inf"});
  }
}

BOOST_AUTO_TEST_SUITE_END()
