// A transform camex does not ship, written against TransformAxis (camex/merge/axis/transform.hpp) only, as
// docs/extending.md shows it: one trainable gain per expert, T_i(x) = g_i x. Composed with the identity mask and
// with the TIES mask by camex::ComposedPolicy; the merge against the formula in double, every gradient (experts,
// base, scores, gains) against central finite differences, on every backend.
#include "camex/camex.hpp"

#include "finite_difference.hpp"
#include "testing.hpp"

#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace user {

/// T_i(x) = g_i x, with g [n] trainable (starts at 1).
template <class Scalar, class ExecSpace>
class ExpertGain {
 public:
  static constexpr bool is_identity = false;

  explicit ExpertGain(std::size_t experts) : gain_("gain", experts), d_gain_("d_gain", experts) {
    Kokkos::deep_copy(gain_, Scalar(1));
  }

  std::vector<Parameter<Scalar, ExecSpace>> parameters() { return {Parameter<Scalar, ExecSpace>::of("gain", gain_, d_gain_)}; }

  /// No scratch: apply and backward work in place of their operands.
  template <class T, class Carver>
  void layout(Carver&) const {}

  template <class X, class Y>
  void apply(const ExecSpace& space, const X& x, const Y& y, WorkspaceCarver<ExecSpace>&) const {
    const auto g = gain_;
    const std::size_t params = x.extent(1);
    Kokkos::parallel_for("ExpertGain::apply", Kokkos::RangePolicy<ExecSpace>(space, 0, x.extent(0) * params),
                         KOKKOS_LAMBDA(std::size_t k) { y(k / params, k % params) = g(k / params) * x(k / params, k % params); });
  }

  /// d_g[i] = <x_i, d_y_i> (overwritten; one team per expert, so the sum's order depends on the team size only),
  /// then d_x = g d_y.
  template <class X, class DY, class DX>
  void backward(const ExecSpace& space, const X& x, const DY& d_y, const DX& d_x, WorkspaceCarver<ExecSpace>&) {
    const auto g = gain_;
    const auto d_g = d_gain_;
    const std::size_t params = x.extent(1);
    using Team = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
    Kokkos::parallel_for("ExpertGain::d_gain", Kokkos::TeamPolicy<ExecSpace>(space, static_cast<int>(x.extent(0)), Kokkos::AUTO),
                         KOKKOS_LAMBDA(const Team& team) {
                           const std::size_t i = static_cast<std::size_t>(team.league_rank());
                           double dot = 0;
                           Kokkos::parallel_reduce(Kokkos::TeamThreadRange(team, params),
                                                   [&](std::size_t p, double& acc) { acc += double(x(i, p)) * double(d_y(i, p)); }, dot);
                           Kokkos::single(Kokkos::PerTeam(team), [&] { d_g(i) = static_cast<Scalar>(dot); });
                         });
    Kokkos::parallel_for("ExpertGain::backward", Kokkos::RangePolicy<ExecSpace>(space, 0, x.extent(0) * params),
                         KOKKOS_LAMBDA(std::size_t k) { d_x(k / params, k % params) = g(k / params) * d_y(k / params, k % params); });
  }

 private:
  Kokkos::View<Scalar*, typename ExecSpace::memory_space> gain_, d_gain_;
};

}  // namespace user

static_assert(TransformAxis<user::ExpertGain<double, Space>, double, Space>);

namespace {

template <class Mask>
using GainPolicy = ComposedPolicy<double, Space, Mask, user::ExpertGain<double, Space>>;

/// Gains away from their start at 1, so a gradient that ignored them would show.
template <class Policy>
void perturbed_gains(Policy& policy, std::mt19937_64& gen) {
  const auto gain = policy.transform().parameters()[0].value;
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, gain);
  std::uniform_real_distribution<double> u(0.5, 1.5);
  for (std::size_t k = 0; k < host.extent(0); ++k) host(k) = u(gen);
  Kokkos::deep_copy(gain, host);
}

/// merged_b = base + alpha sum_i s[b, i] g_i f_i .* (E_i - base), f from `factor` (1 for no mask).
HostMatrix reference(const HostMatrix& experts, const HostMatrix& base, const HostMatrix& scores, const std::vector<double>& gain,
                     double alpha, const HostMatrix& factor) {
  HostMatrix merged(scores.rows(), experts.cols());
  for (Eigen::Index b = 0; b < scores.rows(); ++b) {
    merged.row(b) = base;
    for (Eigen::Index i = 0; i < experts.rows(); ++i)
      merged.row(b) += alpha * scores(b, i) * gain[i] * factor.row(i).cwiseProduct(experts.row(i) - base);
  }
  return merged;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(transform)

BOOST_AUTO_TEST_CASE(a_users_transform_composes_and_differentiates) {
  std::mt19937_64 gen(test_seed());
  const MergeProblem problem{.experts = 3, .groups = 2, .shape = {6, 5}};
  const std::size_t n = problem.experts, params = problem.shape.params();
  CAMEX_TEST_CONTEXT() {
    const auto check = [&](auto& policy, const char* what) {
      BOOST_TEST_CONTEXT(what) {
        perturbed_gains(policy, gen);
        HostMatrix experts = random_matrix(n, params, gen), base = random_matrix(1, params, gen);
        HostMatrix scores = random_matrix(problem.groups, n, gen, 0.1, 1), d_merged = random_matrix(problem.groups, params, gen);
        MergeDriver driver(policy);
        const StepContext step{.seed = 3, .step = 1, .stream = 0, .training = true};
        const auto merged_now = [&] {
          driver.prepare(Space{}, step, to_device<double>(experts), to_device<double>(base));
          Matrix<double, Space> merged("merged", problem.groups, params);
          driver.merge(Space{}, to_device<double>(scores), merged);
          return to_host(merged);
        };

        // The mask's factor as the policy sees it: 1, or TIES's trim and election for these deltas.
        HostMatrix factor = HostMatrix::Ones(n, params);
        if constexpr (std::is_same_v<typename std::decay_t<decltype(policy)>::mask_type, TiesMask>) {
          Matrix<double, Space> f("f", n, params);
          const std::vector<double> weights(n, 1.0);
          ties_mask(Space{}, to_device<double>(HostMatrix(experts.rowwise() - base.row(0))), weights, policy.mask().options, f,
                    make_workspace<Space>(ties_mask_workspace_bytes<double, Space>(n, params)));
          factor = to_host(f);
        }
        const std::vector<double> gain = host_values(policy.transform().parameters()[0].value);
        const HostMatrix got = merged_now(), want = reference(experts, base, scores, gain, policy.merge_options().alpha, factor);
        // A handful of products and sums in double per entry.
        BOOST_TEST((got - want).cwiseAbs().maxCoeff() <= 1e-13 * (1 + want.cwiseAbs().maxCoeff()));

        Matrix<double, Space> d_scores("d_scores", problem.groups, n), d_experts("d_experts", n, params), d_base("d_base", 1, params);
        merged_now();
        driver.backward(Space{}, to_device<double>(scores), to_device<double>(d_merged), d_scores, d_experts, d_base);
        const HostMatrix g_scores = to_host(d_scores), g_experts = to_host(d_experts), g_base = to_host(d_base);
        const std::vector<double> g_gain = host_values(policy.transform().parameters()[0].gradient);
        GradientCheck fd([&] { return (merged_now().array() * d_merged.array()).sum(); });
        fd.matrix(experts, g_experts);
        fd.matrix(base, g_base);
        fd.matrix(scores, g_scores);
        fd.parameter(policy.transform().parameters()[0].value, g_gain);
        // Central differences in double, h = 1e-6: truncation and rounding both near 1e-10 of the gradients' scale.
        BOOST_TEST(fd.worst() <= 1e-7 * std::max(1.0, fd.scale()), "worst " << fd.worst() << " of gradients up to " << fd.scale());
        BOOST_TEST(fd.scale() > 1e-2);
      }
    };
    GainPolicy<NoMask> plain("user::GainPolicy", problem, {.alpha = 0.7}, NoMask{}, user::ExpertGain<double, Space>(n));
    check(plain, "identity mask");
    GainPolicy<TiesMask> ties("user::GainTies", problem, {.alpha = 0.7}, TiesMask{.options = {.density = 0.6}},
                              user::ExpertGain<double, Space>(n));
    check(ties, "TIES mask");
  }
}

BOOST_AUTO_TEST_SUITE_END()
