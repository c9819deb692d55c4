// A merge policy camex does not ship, written against the public concepts only: a norm-preserving merge.
//
//   m_b = sum_i s[b, i] E_i,   rho_b = sum_i s[b, i] ||E_i||,   merged_b = rho_b m_b / ||m_b||
//
// Averaging experts shrinks the merged tensor when the experts point different ways; this merge keeps the
// direction of the Euclidean merge and restores the score-weighted norm. Its backward, with u = m / ||m|| and
// G = dL/dmerged:  d rho_b = <G_b, u_b>,  d m_b = rho_b / ||m_b|| (G_b - u_b <u_b, G_b>),  then through the soft
// merge (camex::soft_merge_backward) and the norms: dE_i += sum_b d rho_b s[b, i] E_i / ||E_i||,
// d s[b, i] += d rho_b ||E_i||.
//
// The program runs the policy through camex::MergeDriver, the same driver the built-ins go through, checks that
// every merged tensor has the promised norm and that every gradient matches central finite differences, and
// exits non-zero otherwise (ctest runs it as examples.custom_policy).
#include <camex/camex.hpp>

#include "common/io/host_values.hpp"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

// Kernels a policy launches live in free functions (or public members): nvcc refuses device lambdas inside
// private member functions.

/// The Euclidean norm of every row of v, each a reduction on the execution space.
template <class Space, class View>
std::vector<double> row_norms(const Space& space, const View& v) {
  std::vector<double> norms(v.extent(0));
  for (std::size_t r = 0; r < v.extent(0); ++r) {
    const auto row = Kokkos::subview(v, r, Kokkos::ALL);
    double sum = 0;
    Kokkos::parallel_reduce("NormPreservingMerge::norm", Kokkos::RangePolicy<Space>(space, 0, v.extent(1)),
                            KOKKOS_LAMBDA(std::size_t p, double& acc) { acc += double(row(p)) * double(row(p)); }, sum);
    norms[r] = std::sqrt(sum);
  }
  return norms;
}

template <std::floating_point T, class Space = Kokkos::DefaultExecutionSpace>
class NormPreservingMerge {
 public:
  using scalar_type = T;
  using execution_space = Space;
  using In = camex::ConstMatrix<T, Space>;
  using Out = camex::Matrix<T, Space>;

  explicit NormPreservingMerge(const camex::MergeProblem& problem)
      : problem_(problem), direction_("direction", problem.groups, problem.shape.params()),
        d_direction_("d_direction", problem.groups, problem.shape.params()) {}

  camex::MergeProblem problem() const { return problem_; }
  camex::BaseSource base_source() const { return camex::BaseSource::none; }
  std::size_t workspace_bytes() const {
    return camex::soft_merge_backward_workspace_bytes<T, Space>(problem_.groups, problem_.experts, problem_.shape.params());
  }
  std::vector<camex::Parameter<T, Space>> parameters() { return {}; }

  void prepare(const Space& space, const camex::StepContext&, const In& experts, const In&, const camex::Workspace<Space>&) {
    experts_ = experts;
    expert_norms_ = row_norms(space, experts);
  }

  void merge(const Space& space, const In& scores, const Out& merged, const camex::Workspace<Space>&) const {
    const auto m = Kokkos::subview(direction_, std::pair<std::size_t, std::size_t>(0, scores.extent(0)), Kokkos::ALL);
    camex::soft_merge(space, scores, experts_, m);
    const auto scale = row_scales(space, scores, m);  // rho_b / ||m_b||
    const std::size_t P = merged.extent(1);
    Kokkos::parallel_for("NormPreservingMerge::merge", Kokkos::RangePolicy<Space>(space, 0, merged.size()),
                         KOKKOS_LAMBDA(std::size_t k) { merged(k / P, k % P) = scale(k / P) * m(k / P, k % P); });
  }

  void backward(const Space& space, const In& scores, const In& d_merged, const Out& d_scores, const Out& d_experts,
                const Out&, const camex::Workspace<Space>& workspace) const {
    const std::size_t B = scores.extent(0), n = problem_.experts, P = problem_.shape.params();
    const std::pair<std::size_t, std::size_t> groups(0, B);
    const auto m = Kokkos::subview(direction_, groups, Kokkos::ALL);
    const auto dm = Kokkos::subview(d_direction_, groups, Kokkos::ALL);
    camex::soft_merge(space, scores, experts_, m);
    const auto norms = row_norms(space, m);
    const auto rho = weighted_norms(scores);
    // <u_b, G_b> for each group, on the host: B numbers.
    std::vector<double> u_dot_g(B);
    for (std::size_t b = 0; b < B; ++b) {
      const auto mb = Kokkos::subview(m, b, Kokkos::ALL);
      const auto gb = Kokkos::subview(d_merged, b, Kokkos::ALL);
      double dot = 0;
      Kokkos::parallel_reduce("NormPreservingMerge::dot", Kokkos::RangePolicy<Space>(space, 0, P),
                              KOKKOS_LAMBDA(std::size_t p, double& acc) { acc += double(mb(p)) * double(gb(p)); }, dot);
      u_dot_g[b] = dot / norms[b];
    }
    Kokkos::View<double*, Kokkos::HostSpace> coef_host("coef", 2 * B);
    for (std::size_t b = 0; b < B; ++b) {
      coef_host(b) = rho[b] / norms[b];         // scales G_b
      coef_host(B + b) = u_dot_g[b] / norms[b];  // scales m_b, so that u <u, G> = m <u, G> / ||m||
    }
    const auto coef = Kokkos::create_mirror_view_and_copy(typename Space::memory_space{}, coef_host);
    Kokkos::parallel_for("NormPreservingMerge::d_direction", Kokkos::RangePolicy<Space>(space, 0, B * P), KOKKOS_LAMBDA(std::size_t k) {
      const std::size_t b = k / P, p = k % P;
      dm(b, p) = static_cast<T>(coef(b) * (double(d_merged(b, p)) - coef(B + b) * double(m(b, p))));
    });
    camex::soft_merge_backward(space, scores, experts_, dm, d_scores, d_experts, workspace);

    // The norm term: dE_i += (sum_b d rho_b s[b, i]) E_i / ||E_i||, d s[b, i] += d rho_b ||E_i||.
    const auto s_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, scores);
    auto ds_host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, d_scores);
    Kokkos::View<double*, Kokkos::HostSpace> per_expert_host("per_expert", n);
    for (std::size_t i = 0; i < n; ++i) {
      double sum = 0;
      for (std::size_t b = 0; b < B; ++b) {
        sum += u_dot_g[b] * double(s_host(b, i));
        ds_host(b, i) += static_cast<T>(u_dot_g[b] * expert_norms_[i]);
      }
      per_expert_host(i) = expert_norms_[i] > 0 ? sum / expert_norms_[i] : 0.0;
    }
    Kokkos::deep_copy(d_scores, ds_host);
    const auto per_expert = Kokkos::create_mirror_view_and_copy(typename Space::memory_space{}, per_expert_host);
    const auto experts = experts_;
    Kokkos::parallel_for("NormPreservingMerge::d_experts", Kokkos::RangePolicy<Space>(space, 0, n * P), KOKKOS_LAMBDA(std::size_t k) {
      const std::size_t i = k / P, p = k % P;
      d_experts(i, p) += static_cast<T>(per_expert(i) * double(experts(i, p)));
    });
  }

 private:
  std::vector<double> weighted_norms(const In& scores) const {
    const auto s = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, scores);
    std::vector<double> rho(scores.extent(0), 0.0);
    for (std::size_t b = 0; b < rho.size(); ++b)
      for (std::size_t i = 0; i < problem_.experts; ++i) rho[b] += double(s(b, i)) * expert_norms_[i];
    return rho;
  }

  template <class M>
  Kokkos::View<double*, typename Space::memory_space> row_scales(const Space& space, const In& scores, const M& m) const {
    const auto norms = row_norms(space, m);
    const auto rho = weighted_norms(scores);
    Kokkos::View<double*, Kokkos::HostSpace> scale("scale", rho.size());
    for (std::size_t b = 0; b < rho.size(); ++b) scale(b) = norms[b] > 0 ? rho[b] / norms[b] : 0.0;
    return Kokkos::create_mirror_view_and_copy(typename Space::memory_space{}, scale);
  }

  camex::MergeProblem problem_;
  Out direction_, d_direction_;
  In experts_;
  std::vector<double> expert_norms_;
};

static_assert(camex::MergePolicy<NormPreservingMerge<float>>, "the custom policy satisfies camex's concept");

namespace {

using Space = Kokkos::DefaultExecutionSpace;

using camex::examples::device_matrix;
using camex::examples::host_values;

int run() {
  const camex::MergeProblem problem{.experts = 4, .groups = 3, .shape = {8, 16}};
  const std::size_t n = problem.experts, B = problem.groups, P = problem.shape.params();
  std::mt19937_64 gen(2026);
  std::uniform_real_distribution<double> uniform(-1, 1), positive(0.05, 1);
  std::vector<double> experts(n * P), scores(B * n), weights(B * P);
  for (auto& x : experts) x = uniform(gen);
  for (auto& x : scores) x = positive(gen);
  for (auto& x : weights) x = uniform(gen);

  NormPreservingMerge<double> policy(problem);
  camex::MergeDriver<NormPreservingMerge<double>> driver(policy);
  const auto merged_of = [&](const std::vector<double>& e, const std::vector<double>& s) {
    driver.prepare(Space{}, {}, device_matrix<double>(e, n, P), {});
    camex::Matrix<double, Space> merged("merged", B, P);
    driver.merge(Space{}, device_matrix<double>(s, B, n), merged);
    return host_values(merged);
  };
  const auto loss = [&](const std::vector<double>& e, const std::vector<double>& s) {
    const auto m = merged_of(e, s);
    double sum = 0;
    for (std::size_t k = 0; k < m.size(); ++k) sum += m[k] * weights[k];
    return sum;
  };

  // The promise: ||merged_b|| = sum_i s[b, i] ||E_i||.
  const auto merged = merged_of(experts, scores);
  double worst_norm = 0;
  for (std::size_t b = 0; b < B; ++b) {
    double norm = 0, rho = 0;
    for (std::size_t p = 0; p < P; ++p) norm += merged[b * P + p] * merged[b * P + p];
    for (std::size_t i = 0; i < n; ++i) {
      double e = 0;
      for (std::size_t p = 0; p < P; ++p) e += experts[i * P + p] * experts[i * P + p];
      rho += scores[b * n + i] * std::sqrt(e);
    }
    worst_norm = std::max(worst_norm, std::abs(std::sqrt(norm) - rho) / rho);
  }

  camex::Matrix<double, Space> d_scores("d_scores", B, n), d_experts("d_experts", n, P);
  driver.prepare(Space{}, {}, device_matrix<double>(experts, n, P), {});
  driver.backward(Space{}, device_matrix<double>(scores, B, n), device_matrix<double>(weights, B, P), d_scores, d_experts, {});
  const auto ds = host_values(d_scores), de = host_values(d_experts);
  // Central differences in double: truncation O(h^2) and rounding eps |L| / h are both near 1e-10 at h = 1e-5.
  const double h = 1e-5;
  double worst_gradient = 0;
  const auto probe = [&](std::vector<double>& x, const std::vector<double>& analytic) {
    for (std::size_t k = 0; k < x.size(); ++k) {
      const double keep = x[k];
      x[k] = keep + h;
      const double up = loss(experts, scores);
      x[k] = keep - h;
      const double down = loss(experts, scores);
      x[k] = keep;
      worst_gradient = std::max(worst_gradient, std::abs((up - down) / (2 * h) - analytic[k]));
    }
  };
  probe(experts, de);
  probe(scores, ds);

  std::printf("custom policy NormPreservingMerge on %s: %zu experts, %zu groups, %zu parameters\n",
              Space::name(), n, B, P);
  std::printf("  relative norm error %.2e (allowed 1e-12), worst gradient error vs finite differences %.2e (allowed 1e-7)\n",
              worst_norm, worst_gradient);
  const bool ok = worst_norm <= 1e-12 && worst_gradient <= 1e-7;
  std::printf("  %s\n", ok ? "passed" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char* argv[]) {
  Kokkos::ScopeGuard kokkos(argc, argv);
  return run();
}
