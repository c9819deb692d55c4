// A mask camex does not ship, written against the public MaskAxis contract (camex/merge/axis/mask.hpp) only: an
// outlier trim after model breadcrumbs (mergekit's `breadcrumbs` method; the counts and the tie rule below are
// this example's, not checked against mergekit's). Of each expert's delta tau_i = E_i - base,
// rank the entries by magnitude (ties to the lower index); drop the top `gamma` fraction (the outliers), keep the
// next `density` fraction, drop the rest (the small entries):
//
//   f[i, p] = 1  if  floor(gamma P) <= rank_i(p) < floor(gamma P) + k,  k = floor(density P) (camex::top_k_count)
//   merged_b = base + alpha sum_i s[b, i] f[i] .* tau_i
//
// f is piecewise constant in the deltas, so its adjoint is d_tau = f .* d_masked. Both trims are camex's exact
// top-k (camex::top_k_by_magnitude): the kept set is the top (outliers + k) minus the top (outliers), which nest
// because both break ties the same way. camex::ComposedPolicy composes the mask with the identity transform, as
// it does the built-in TIES and DARE masks.
//
// The program checks the merge against the formula evaluated in double on the host, then runs the policy inside a
// camex::MergedLinear under the noisy top-k gate and checks every gradient of the layer (tokens, experts, base)
// against central finite differences; it exits non-zero otherwise (ctest runs it as examples.custom_mask).
#include <camex/camex.hpp>

#include "common/io/host_values.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

/// The breadcrumbs trim as a camex mask: `density` of each delta kept after dropping the `gamma` largest.
struct BreadcrumbsMask {
  double density = 0.5;
  double gamma = 0.05;

  template <class ExecSpace>
  struct State {
    typename camex::WorkspaceCarver<ExecSpace>::template Matrix<std::uint8_t> kept;      // top (outliers + k)
    typename camex::WorkspaceCarver<ExecSpace>::template Matrix<std::uint8_t> outliers;  // top (outliers)
    camex::Workspace<ExecSpace> select;
  };

  /// Called by ComposedPolicy's constructor with the policy's name.
  void check(const char* function, const camex::MergeProblem&) const {
    if (!(density > 0 && density <= 1))
      throw camex::argument_error(function, "mask.density", "a fraction in (0, 1]", camex::concat(density));
    if (!(gamma >= 0 && gamma + density <= 1))
      throw camex::argument_error(function, "mask.gamma", camex::concat("a fraction in [0, 1 - density = ", 1 - density, "]"),
                                  camex::concat(gamma));
  }

  std::size_t outlier_count(std::size_t params) const { return static_cast<std::size_t>(gamma * static_cast<double>(params)); }

  bool factor_active(const camex::StepContext&) const { return true; }
  bool score_factor_active(const camex::StepContext&) const { return false; }
  bool needs_deltas(const camex::StepContext&) const { return true; }  // the ranks read whole rows of tau
  camex::MaskPlacement placement() const { return camex::MaskPlacement::on_delta; }

  template <class T, class Carver>
  State<typename Carver::execution_space> layout(Carver& carver, const camex::MergeProblem& problem) const {
    using Space = typename Carver::execution_space;
    const std::size_t n = problem.experts, params = problem.shape.params();
    State<Space> state;
    state.kept = carver.template take_matrix<std::uint8_t>(n, params);
    state.outliers = carver.template take_matrix<std::uint8_t>(n, params);
    const auto select = carver.template take<unsigned char>(camex::top_k_workspace_bytes<T, Space>(n, params));
    state.select = camex::Workspace<Space>(select.data(), select.extent(0));
    return state;
  }

  template <class ExecSpace, class Tau>
  void prepare(const ExecSpace& space, const camex::StepContext&, const Tau& tau, const State<ExecSpace>& state) const {
    const std::size_t params = tau.extent(1), outliers = outlier_count(params);
    const std::size_t kept = outliers + camex::top_k_count("BreadcrumbsMask", density, params);
    camex::top_k_by_magnitude(space, tau, kept, state.kept, state.select);
    if (outliers > 0)
      camex::top_k_by_magnitude(space, tau, outliers, state.outliers, state.select);
    else
      Kokkos::deep_copy(space, state.outliers, std::uint8_t{0});
  }

  /// f over a run of parameters, for every expert: what the merge applies where the deltas sit in L1.
  struct Factor {
    const std::uint8_t* kept;
    const std::uint8_t* outliers;
    std::size_t params;
    int experts;

    template <bool Multiply, class T>
    KOKKOS_INLINE_FUNCTION void apply(std::size_t p0, int len, const T* tau, std::ptrdiff_t tau_stride, T* out,
                                      std::ptrdiff_t out_stride) const {
      for (int i = 0; i < experts; ++i)
        for (int q = 0; q < len; ++q) {
          const std::size_t at = static_cast<std::size_t>(i) * params + p0 + static_cast<std::size_t>(q);
          const T f = kept[at] && !outliers[at] ? T(1) : T(0);
          out[i * out_stride + q] = Multiply ? f * tau[i * tau_stride + q] : f;
        }
    }
  };

  template <class ExecSpace>
  Factor element_factor(const camex::StepContext&, const State<ExecSpace>& state) const {
    return {state.kept.data(), state.outliers.data(), state.kept.extent(1), static_cast<int>(state.kept.extent(0))};
  }

  template <class ExecSpace, class Tau, class F, class In, class Out>
  void adjoint(const ExecSpace& space, const camex::StepContext&, const Tau&, const F& factor, const In& d_masked,
               const Out& d_tau, const State<ExecSpace>&) const {
    const std::size_t params = d_tau.extent(1);
    Kokkos::parallel_for("BreadcrumbsMask::adjoint", Kokkos::RangePolicy<ExecSpace>(space, 0, d_tau.size()),
                         KOKKOS_LAMBDA(std::size_t k) {
                           const std::size_t i = k / params, p = k % params;
                           d_tau(i, p) = factor(i, p) * d_masked(i, p);
                         });
  }

  camex::UnitScoreFactor score_factor(const camex::StepContext&) const { return {}; }
};

template <class T, class Space>
using Breadcrumbs = camex::ComposedPolicy<T, Space, BreadcrumbsMask, camex::IdentityTransform>;

namespace {

using Space = Kokkos::DefaultExecutionSpace;
static_assert(camex::MaskAxis<BreadcrumbsMask, Space, double>);
static_assert(camex::MergePolicy<Breadcrumbs<double, Space>>);

using camex::examples::device_matrix;
using camex::examples::host_values;

/// merged_b = base + alpha sum_i s[b, i] f_i .* (E_i - base), f by sorting each delta's magnitudes.
std::vector<double> reference_merge(const BreadcrumbsMask& mask, double alpha, const std::vector<double>& experts,
                                    const std::vector<double>& base, const std::vector<double>& scores, std::size_t n,
                                    std::size_t groups, std::size_t params) {
  const std::size_t outliers = mask.outlier_count(params), kept = camex::top_k_count("reference", mask.density, params);
  std::vector<double> merged(groups * params);
  for (std::size_t b = 0; b < groups; ++b)
    for (std::size_t p = 0; p < params; ++p) merged[b * params + p] = base[p];
  for (std::size_t i = 0; i < n; ++i) {
    std::vector<double> tau(params);
    for (std::size_t p = 0; p < params; ++p) tau[p] = experts[i * params + p] - base[p];
    std::vector<std::size_t> order(params);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t c) { return std::abs(tau[a]) > std::abs(tau[c]); });
    for (std::size_t r = outliers; r < outliers + kept; ++r) {
      const std::size_t p = order[r];
      for (std::size_t b = 0; b < groups; ++b) merged[b * params + p] += alpha * scores[b * n + i] * tau[p];
    }
  }
  return merged;
}

int run() {
  const std::size_t n = 3, in = 6, out = 5, params = out * in;
  const camex::RoutingLayout layout{.sequences = 2, .length = 4};  // one routing group per sequence
  const std::size_t groups = layout.groups(), tokens = layout.tokens();
  const BreadcrumbsMask mask{.density = 0.6, .gamma = 0.1};
  const camex::MergeOptions options{.alpha = 0.8};
  std::mt19937_64 gen(2026);
  std::uniform_real_distribution<double> uniform(-1, 1), positive(0.05, 1);
  const auto draw = [&](std::size_t count) {
    std::vector<double> v(count);
    for (auto& x : v) x = uniform(gen);
    return v;
  };
  std::vector<double> experts = draw(n * params), base = draw(params), x = draw(tokens * in), d_y = draw(tokens * out);

  // 1. The merge, through the driver every policy goes through, against the formula.
  Breadcrumbs<double, Space> policy("Breadcrumbs", camex::layer_problem(layout, n, {out, in}), options, mask, {});
  std::vector<double> scores(groups * n);
  for (auto& s : scores) s = positive(gen);
  camex::MergeDriver driver(policy);
  driver.prepare(Space{}, {}, device_matrix<double>(experts, n, params), device_matrix<double>(base, 1, params));
  camex::Matrix<double, Space> merged("merged", groups, params);
  driver.merge(Space{}, device_matrix<double>(scores, groups, n), merged);
  const auto got = host_values(merged), want = reference_merge(mask, options.alpha, experts, base, scores, n, groups, params);
  double worst_merge = 0;
  for (std::size_t k = 0; k < got.size(); ++k) worst_merge = std::max(worst_merge, std::abs(got[k] - want[k]));

  // 2. Inside a merged linear layer: L = <y, d_y> + aux; every gradient against central differences.
  camex::NoisyTopKGate<double, Space> router(in, n, layout, {.k = 2, .balance_coefficient = 0.3, .init_std = 0.5}, 7);
  camex::MergedLinear layer(policy, nullptr, router, layout);
  const auto workspace = camex::make_workspace<Space>(layer.workspace_bytes());
  const camex::StepContext step{.seed = 11, .step = 1, .stream = 0, .training = true};
  const double d_aux = 0.5;
  const auto loss = [&] {
    camex::Matrix<double, Space> y("y", tokens, out);
    const double aux = layer.forward(Space{}, step, device_matrix<double>(x, tokens, in), {},
                                     {device_matrix<double>(experts, n, params), device_matrix<double>(base, 1, params)}, std::nullopt, y, workspace);
    const auto yh = host_values(y);
    double sum = d_aux * aux;
    for (std::size_t k = 0; k < yh.size(); ++k) sum += yh[k] * d_y[k];
    return sum;
  };
  loss();
  camex::Matrix<double, Space> d_x("d_x", tokens, in), d_experts("d_experts", n, params), d_base("d_base", 1, params);
  layer.backward(Space{}, device_matrix<double>(d_y, tokens, out), d_aux, d_x, {d_experts, d_base}, std::nullopt, workspace);
  const auto gx = host_values(d_x), ge = host_values(d_experts), gb = host_values(d_base);
  // Central differences in double: truncation O(h^2) and rounding eps |L| / h are both near 1e-10 at h = 1e-5. A
  // step never moves an entry across a rank boundary here: the gaps between neighbouring magnitudes are ~1e-2.
  const double h = 1e-5;
  double worst_gradient = 0, largest = 0;
  const auto probe = [&](std::vector<double>& values, const std::vector<double>& analytic) {
    for (std::size_t k = 0; k < values.size(); ++k) {
      const double keep = values[k];
      values[k] = keep + h;
      const double up = loss();
      values[k] = keep - h;
      const double down = loss();
      values[k] = keep;
      worst_gradient = std::max(worst_gradient, std::abs((up - down) / (2 * h) - analytic[k]));
      largest = std::max(largest, std::abs(analytic[k]));
    }
  };
  probe(x, gx);
  probe(experts, ge);
  probe(base, gb);

  std::printf("custom mask BreadcrumbsMask (density %.2f, gamma %.2f) on %s: %zu experts of %zu x %zu, %zu groups\n",
              mask.density, mask.gamma, Space::name(), n, out, in, groups);
  std::printf("  merge vs the formula in double: worst error %.2e (allowed 1e-12)\n", worst_merge);
  std::printf("  MergedLinear gradients vs central differences: worst error %.2e of gradients up to %.2f (allowed 1e-7)\n",
              worst_gradient, largest);
  const bool ok = worst_merge <= 1e-12 && worst_gradient <= 1e-7 && largest > 1e-2;
  std::printf("  %s\n", ok ? "passed" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  try {
    return run();
  } catch (const camex::argument_error& e) {
    std::printf("%s\n", e.what());
    return 1;
  }
}
