#pragma once
// Runs any MergePolicy from host matrices, and checks every gradient it reports (experts, base, scores and each
// of its own parameters) against central finite differences of L = <W, merged> in double. Used by the tests of
// the built-in policies and by the custom-policy example's test, so a user's policy is held to the same check.

#include <boost/test/unit_test.hpp>

#include <Kokkos_Core.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "camex/core/workspace.hpp"
#include "camex/merge/concepts.hpp"
#include "camex/merge/driver.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

namespace camex::testing {

/// The operands of one step, on the host in double. `base` is empty when the policy takes none.
struct PolicyInputs {
  HostMatrix experts, base, scores;
  StepContext step{};
};

template <MergePolicy P>
Matrix<typename P::scalar_type, Space> device_or_empty(const HostMatrix& m) {
  if (m.size() == 0) return {};
  return to_device<typename P::scalar_type>(m);
}

/// prepare + merge through the MergeDriver; returns merged [B, P].
template <MergePolicy P>
HostMatrix run_merge(P& policy, const PolicyInputs& in) {
  using T = typename P::scalar_type;
  MergeDriver<P> driver(policy);
  driver.prepare(Space{}, in.step, to_device<T>(in.experts), device_or_empty<P>(in.base));
  Matrix<T, Space> merged("merged", in.scores.rows(), in.experts.cols());
  driver.merge(Space{}, to_device<T>(in.scores), merged);
  return to_host(merged);
}

struct PolicyGradients {
  HostMatrix d_experts, d_base, d_scores;
  std::vector<HostMatrix> parameters;  // each as one row
};

/// prepare + merge + backward with d_merged through the MergeDriver; returns every gradient the policy reports.
template <MergePolicy P>
PolicyGradients run_backward(P& policy, const PolicyInputs& in, const HostMatrix& d_merged) {
  using T = typename P::scalar_type;
  MergeDriver<P> driver(policy);
  const auto scores = to_device<T>(in.scores);
  driver.prepare(Space{}, in.step, to_device<T>(in.experts), device_or_empty<P>(in.base));
  Matrix<T, Space> d_scores("d_scores", in.scores.rows(), in.scores.cols()),
      d_experts("d_experts", in.experts.rows(), in.experts.cols());
  Matrix<T, Space> d_base = in.base.size() ? Matrix<T, Space>("d_base", 1, in.experts.cols()) : Matrix<T, Space>();
  driver.backward(Space{}, scores, to_device<T>(d_merged), d_scores, d_experts, d_base);
  PolicyGradients g{to_host(d_experts), in.base.size() ? to_host(d_base) : HostMatrix(), to_host(d_scores), {}};
  for (const auto& parameter : policy.parameters()) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, parameter.gradient);
    HostMatrix row(1, host.extent(0));
    for (std::size_t k = 0; k < host.extent(0); ++k) row(0, k) = static_cast<double>(host(k));
    g.parameters.push_back(row);
  }
  return g;
}

namespace detail_check {

inline void compare(const std::string& what, double analytic, double numeric, double tolerance) {
  BOOST_TEST(std::abs(analytic - numeric) <= tolerance * (1 + std::abs(numeric)),
             what << ": backward " << analytic << ", finite difference " << numeric);
}

}  // namespace detail_check

/// A step rejects a NaN or an infinity in the experts or the base, naming prepare's operand and the first bad
/// entry, and a later step with good operands succeeds; in an evaluation step and in a training step, whose
/// prepare checks in different passes. Where the host reads the space's memory prepare throws; on a device the
/// check may wait for the step's one read-back, in its merge (docs/layers.md, "What a step moves"). `in` must hold
/// finite operands and scores with at least 2 experts and 8 entries per expert.
template <MergePolicy P>
void require_rejects_non_finite(P& policy, const PolicyInputs& in) {
  using T = typename P::scalar_type;
  const std::string fn = "::prepare";
  for (const bool training : {false, true}) {
    BOOST_TEST_CONTEXT("training " << training) {
      StepContext step = in.step;
      step.training = training;
      const auto prepare = [&](const HostMatrix& experts, const HostMatrix& base) {
        MergeDriver<P> driver(policy);
        driver.prepare(Space{}, step, to_device<T>(experts), device_or_empty<P>(base));
        Matrix<T, Space> merged("merged", static_cast<std::size_t>(in.scores.rows()), policy.problem().shape.params());
        driver.merge(Space{}, to_device<T>(in.scores), merged);
      };
      const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
      HostMatrix experts = in.experts;
      experts(1, 5) = nan;
      experts(1, 7) = inf;
      require_argument_error([&] { prepare(experts, in.base); }, "experts", {fn, "finite values", "experts(1, 5) = nan"});
      experts = in.experts;
      experts(0, 6) = -inf;
      require_argument_error([&] { prepare(experts, in.base); }, "experts", {"experts(0, 6) = -inf"});
      if (in.base.size() != 0) {
        HostMatrix base = in.base;
        base(0, 7) = inf;
        base(0, 3) = nan;
        require_argument_error([&] { prepare(in.experts, base); }, "base", {fn, "finite values", "base(0, 3) = nan"});
      }
      prepare(in.experts, in.base);
    }
  }
}

/// Differences of L = <d_merged, merged> in each input and parameter entry (`derivative`: central, or one-sided
/// where a mask's threshold lies within the step), against run_backward. The policy must be over double. With
/// step h the truncation error is O(h^2 L''') and the rounding error about eps |L| / h; h = 1e-5 keeps both near
/// 1e-10 for the O(1) inputs the tests use, so `tolerance` (relative to 1 + |gradient|) can be 1e-7 while a wrong
/// term (an O(1) error) cannot hide.
template <MergePolicy P>
void check_gradients(P& policy, const PolicyInputs& in, const HostMatrix& d_merged, double tolerance = 1e-7) {
  static_assert(std::is_same_v<typename P::scalar_type, double>, "finite differences run in double");
  const double h = 1e-5;
  const auto analytic = run_backward(policy, in, d_merged);
  const auto loss = [&](const PolicyInputs& x) { return (run_merge(policy, x).array() * d_merged.array()).sum(); };
  const double centre = loss(in);
  const auto probe = [&](HostMatrix PolicyInputs::*member, const HostMatrix& grad, const char* name) {
    PolicyInputs x = in;
    HostMatrix& m = x.*member;
    for (Eigen::Index k = 0; k < m.size(); ++k) {
      const double keep = m.data()[k];
      const double numeric = derivative(
          [&](double v) {
            m.data()[k] = v;
            return loss(x);
          },
          keep, centre, h);
      m.data()[k] = keep;
      detail_check::compare(std::string(name) + "[" + std::to_string(k) + "]", grad.data()[k], numeric, tolerance);
    }
  };
  probe(&PolicyInputs::experts, analytic.d_experts, "d_experts");
  if (in.base.size()) probe(&PolicyInputs::base, analytic.d_base, "d_base");
  probe(&PolicyInputs::scores, analytic.d_scores, "d_scores");

  auto parameters = policy.parameters();
  for (std::size_t q = 0; q < parameters.size(); ++q) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, parameters[q].value);
    for (std::size_t k = 0; k < host.extent(0); ++k) {
      const double keep = host(k);
      const auto at = [&](double v) {
        host(k) = v;
        Kokkos::deep_copy(parameters[q].value, host);
        return loss(in);
      };
      const double numeric = derivative(at, keep, centre, h);
      at(keep);
      detail_check::compare(parameters[q].name + "[" + std::to_string(k) + "]", analytic.parameters[q](0, k), numeric,
                            tolerance);
    }
  }
}

}  // namespace camex::testing
