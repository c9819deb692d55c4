// Dynamic merging (EP-CAMEx): a chain of layers whose base is propagated, against a double reference of the
// recurrence built from explicit Kronecker products; every gradient (the base parameter, each layer's experts,
// scores and four factor stacks) by central differences of a loss summed over the layers; the call-order rules.
#include "camex/merge/dynamic.hpp"

#include "curvature_reference.hpp"
#include "policy_check.hpp"
#include "testing.hpp"

#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

const MergeProblem problem{.experts = 2, .groups = 2, .shape = {4, 6}};
constexpr std::size_t layers = 3;
const DynamicOptions options{.gamma = 0.8, .alpha = 0.9, .curvature = {.rank = 2}};

struct ChainInputs {
  HostMatrix base;
  std::vector<HostMatrix> experts, scores, d_merged;
};

ChainInputs random_chain(std::mt19937_64& gen) {
  ChainInputs in{random_matrix(1, problem.shape.params(), gen), {}, {}, {}};
  for (std::size_t l = 0; l < layers; ++l) {
    in.experts.push_back(random_matrix(problem.experts, problem.shape.params(), gen));
    in.scores.push_back(random_matrix(problem.groups, problem.experts, gen, 0.05, 1.0));
    in.d_merged.push_back(random_matrix(problem.groups, problem.shape.params(), gen));
  }
  return in;
}

/// Prepares and merges every layer in order; returns the merged tensors.
std::vector<HostMatrix> run_chain(DynamicChain<double, Space>& chain, const ChainInputs& in,
                                  std::vector<Workspace<Space>>& workspaces) {
  std::vector<HostMatrix> merged;
  for (std::size_t l = 0; l < layers; ++l) {
    auto& layer = chain.layer(l);
    layer.prepare(Space{}, {}, to_device<double>(in.experts[l]), l == 0 ? to_device<double>(in.base) : Matrix<double, Space>(),
                  workspaces[l]);
    Matrix<double, Space> out("merged", problem.groups, problem.shape.params());
    layer.merge(Space{}, to_device<double>(in.scores[l]), out, workspaces[l]);
    merged.push_back(to_host(out));
  }
  return merged;
}

double loss(DynamicChain<double, Space>& chain, const ChainInputs& in, std::vector<Workspace<Space>>& workspaces) {
  const auto merged = run_chain(chain, in, workspaces);
  double sum = 0;
  for (std::size_t l = 0; l < layers; ++l) sum += (merged[l].array() * in.d_merged[l].array()).sum();
  return sum;
}

std::vector<Workspace<Space>> workspaces_for(DynamicChain<double, Space>& chain) {
  std::vector<Workspace<Space>> w;
  for (std::size_t l = 0; l < layers; ++l) w.push_back(make_workspace<Space>(chain.layer(l).workspace_bytes()));
  return w;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(dynamic)

static_assert(MergePolicy<DynamicChain<float, Space>::Layer>);

BOOST_AUTO_TEST_CASE(matches_the_recurrence) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    DynamicChain<double, Space> chain(layers, problem, options);
    std::vector<std::array<std::vector<HostMatrix>, 4>> factors;
    for (std::size_t l = 0; l < layers; ++l)
      factors.push_back(randomise_factors(chain.layer(l).policy().transform(), problem.experts, gen));
    const auto in = random_chain(gen);
    auto workspaces = workspaces_for(chain);
    const auto merged = run_chain(chain, in, workspaces);

    const double c = options.gamma / problem.experts;
    HostMatrix base = in.base;
    for (std::size_t l = 0; l < layers; ++l) {
      HostMatrix step = HostMatrix::Zero(problem.groups, problem.shape.params()), propagation = HostMatrix::Zero(1, problem.shape.params());
      for (std::size_t i = 0; i < problem.experts; ++i) {
        const HostMatrix tau = in.experts[l].row(i) - base;
        const HostMatrix m = reference_transform(factors[l], 2, problem.experts, i, reshape(tau, 4, 6));
        const HostMatrix flat = Eigen::Map<const HostMatrix>(m.data(), 1, problem.shape.params());
        for (std::size_t b = 0; b < problem.groups; ++b) step.row(b) += options.alpha * in.scores[l](b, i) * flat;
        propagation += c * flat;
      }
      const HostMatrix expected = base.replicate(problem.groups, 1) + step;
      BOOST_TEST((merged[l] - expected).cwiseAbs().maxCoeff() <= 1e-12, "layer " << l);
      base += propagation;
    }
  }
}

BOOST_AUTO_TEST_CASE(gradients_through_the_chain) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    DynamicChain<double, Space> chain(layers, problem, options);
    for (std::size_t l = 0; l < layers; ++l) randomise_factors(chain.layer(l).policy().transform(), problem.experts, gen);
    auto in = random_chain(gen);
    auto workspaces = workspaces_for(chain);
    run_chain(chain, in, workspaces);

    // Backward in reverse layer order.
    Matrix<double, Space> d_base("d_base", 1, problem.shape.params());
    std::vector<HostMatrix> d_experts(layers), d_scores(layers);
    std::vector<std::vector<HostMatrix>> d_factors(layers);
    for (std::size_t l = layers; l-- > 0;) {
      Matrix<double, Space> de("de", problem.experts, problem.shape.params()), ds("ds", problem.groups, problem.experts);
      chain.layer(l).backward(Space{}, to_device<double>(in.scores[l]), to_device<double>(in.d_merged[l]), ds, de,
                              l == 0 ? d_base : Matrix<double, Space>(), workspaces[l]);
      d_experts[l] = to_host(de);
      d_scores[l] = to_host(ds);
      for (const auto& p : chain.layer(l).parameters()) {
        auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, p.gradient);
        HostMatrix g(1, host.extent(0));
        for (std::size_t k = 0; k < host.extent(0); ++k) g(0, k) = host(k);
        d_factors[l].push_back(g);
      }
    }

    const double h = 1e-5, tolerance = 1e-7;
    const auto check = [&](double& entry, double analytic, const std::string& what) {
      const double keep = entry;
      entry = keep + h;
      const double up = loss(chain, in, workspaces);
      entry = keep - h;
      const double down = loss(chain, in, workspaces);
      entry = keep;
      const double numeric = (up - down) / (2 * h);
      BOOST_TEST(std::abs(analytic - numeric) <= tolerance * (1 + std::abs(numeric)),
                 what << ": backward " << analytic << ", finite difference " << numeric);
    };
    const HostMatrix db = to_host(d_base);
    for (Eigen::Index k = 0; k < in.base.size(); ++k) check(in.base.data()[k], db.data()[k], "d_base[" + std::to_string(k) + "]");
    for (std::size_t l = 0; l < layers; ++l) {
      for (Eigen::Index k = 0; k < in.experts[l].size(); ++k)
        check(in.experts[l].data()[k], d_experts[l].data()[k], "layer " + std::to_string(l) + " d_experts[" + std::to_string(k) + "]");
      for (Eigen::Index k = 0; k < in.scores[l].size(); ++k)
        check(in.scores[l].data()[k], d_scores[l].data()[k], "layer " + std::to_string(l) + " d_scores[" + std::to_string(k) + "]");
      auto parameters = chain.layer(l).parameters();
      for (std::size_t q = 0; q < parameters.size(); ++q) {
        auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, parameters[q].value);
        for (std::size_t k = 0; k < host.extent(0); ++k) {
          double value = host(k);
          const auto at = [&](double v) {
            host(k) = v;
            Kokkos::deep_copy(parameters[q].value, host);
            return loss(chain, in, workspaces);
          };
          const double up = at(value + h), down = at(value - h);
          at(value);
          const double numeric = (up - down) / (2 * h);
          BOOST_TEST(std::abs(d_factors[l][q](0, k) - numeric) <= tolerance * (1 + std::abs(numeric)),
                     "layer " << l << " " << parameters[q].name << "[" << k << "]: backward " << d_factors[l][q](0, k)
                              << ", finite difference " << numeric);
        }
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(call_order_is_enforced) {
  std::mt19937_64 gen(test_seed());
  DynamicChain<double, Space> chain(layers, problem, options);
  auto workspaces = workspaces_for(chain);
  const auto in = random_chain(gen);
  require_argument_error([&] { DynamicChain<double, Space>(0, problem); }, "layers", {"at least one layer"});
  require_argument_error([&] { chain.layer(3); }, "l", {"below 3", "given 3"});
  require_argument_error(
      [&] { chain.layer(1).prepare(Space{}, {}, to_device<double>(in.experts[1]), Matrix<double, Space>(), workspaces[1]); },
      "this", {"layer 0 prepared before layer 1"});
  run_chain(chain, in, workspaces);
  require_argument_error(
      [&] {
        chain.layer(2).prepare(Space{}, {}, to_device<double>(in.experts[2]), to_device<double>(in.base), workspaces[2]);
      },
      "base", {"propagated"});
  Matrix<double, Space> de("de", problem.experts, problem.shape.params()), ds("ds", problem.groups, problem.experts);
  require_argument_error(
      [&] {
        chain.layer(0).backward(Space{}, to_device<double>(in.scores[0]), to_device<double>(in.d_merged[0]), ds, de,
                                Matrix<double, Space>("db", 1, problem.shape.params()), workspaces[0]);
      },
      "this", {"layer 1's backward before layer 0's"});
  require_argument_error([&] { chain.base_row(0); }, "l", {"1 to 2", "given 0"});
  // A new step that re-prepared only layer 0 leaves the last layer's state stale.
  chain.layer(0).prepare(Space{}, {}, to_device<double>(in.experts[0]), to_device<double>(in.base), workspaces[0]);
  require_argument_error(
      [&] {
        chain.layer(2).backward(Space{}, to_device<double>(in.scores[2]), to_device<double>(in.d_merged[2]), ds, de,
                                Matrix<double, Space>(), workspaces[2]);
      },
      "this", {"layer 2 prepared in this step", "earlier step"});
}

BOOST_AUTO_TEST_CASE(rejects_non_finite_experts_and_base) {
  std::mt19937_64 gen(test_seed());
  DynamicChain<double, Space> chain(layers, problem, options);
  const auto in = random_chain(gen);
  require_rejects_non_finite(chain.layer(0), PolicyInputs{in.experts[0], in.base, in.scores[0]});
  require_rejects_non_finite(chain.layer(1), PolicyInputs{in.experts[1], HostMatrix(), in.scores[1]});
}

BOOST_AUTO_TEST_SUITE_END()
