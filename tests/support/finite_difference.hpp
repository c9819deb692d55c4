#pragma once
// Finite differences of a scalar objective in double, entry by entry, against the analytic gradients a backward
// produced. Keeps the worst absolute difference and the largest difference quotient, so a test states one bound
// relative to the gradients' size (and can check that they are not all zero).
//
// Many objectives here are only piecewise smooth: a TIES trim or sign election, a DARE L1 ratio or a top-k routing
// choice changes when an input crosses a threshold, and the objective jumps there. On fresh random inputs such a
// threshold falls within a step h of the probed value now and then (a CI run met one at h = 1e-5), and a central
// difference across it measures the jump, not the gradient. So `derivative` looks at both sides: a smooth
// objective's forward and backward quotients differ by about h |F''|, a jump J between them by J / h. Where they
// disagree, the side whose quotients at h and h / 2 agree holds no jump, and a second-order one-sided difference
// on that side gives the gradient; where both sides jump (two thresholds within h), the check reports it.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "testing.hpp"

namespace camex::testing {

/// dF/dx at x, from F's value there (`centre`) and `at(v)`, F with x moved to v; robust to one jump within h.
inline double derivative(const std::function<double(double)>& at, double x, double centre, double h) {
  const double up = at(x + h), down = at(x - h);
  const double central = (up - down) / (2 * h);
  // Rounding puts about eps |F| / h into each quotient; 1e-6 stays far above that and far below the O(1) jumps.
  const double smooth = 1e-6 * (1 + std::abs(central) + std::abs(centre) / 1e3);
  if (std::abs((up - centre) - (centre - down)) / h <= smooth) return central;
  const double half_up = at(x + h / 2), half_down = at(x - h / 2);
  const double spread_up = std::abs((up - centre) / h - (half_up - centre) / (h / 2));
  const double spread_down = std::abs((centre - down) / h - (centre - half_down) / (h / 2));
  // (-3 F(x) + 4 F(x + s) - F(x + 2s)) / (2s) with s = h / 2, on the side without the jump.
  if (spread_up <= spread_down) return (4 * half_up - 3 * centre - up) / h;
  return (3 * centre - 4 * half_down + down) / h;
}

class GradientCheck {
 public:
  /// `objective` recomputes the scalar from the current inputs; h is the step of the differences.
  explicit GradientCheck(std::function<double()> objective, double h = 1e-6) : objective_(std::move(objective)), h_(h) {}

  /// One entry, now `keep`, moved by set(value).
  void entry(double keep, const std::function<void(double)>& set, double analytic) {
    const double numeric = derivative(
        [&](double v) {
          set(v);
          return objective_();
        },
        keep, centre(), h_);
    set(keep);
    worst_ = std::max(worst_, std::abs(numeric - analytic));
    scale_ = std::max(scale_, std::abs(numeric));
  }

  /// Every entry of a host matrix the objective reads, except those `skip` names.
  void matrix(HostMatrix& m, const HostMatrix& analytic, const std::function<bool(Eigen::Index)>& skip = {}) {
    for (Eigen::Index k = 0; k < m.size(); ++k)
      if (!skip || !skip(k)) entry(m.data()[k], [&](double v) { m.data()[k] = v; }, analytic.data()[k]);
  }

  /// Every entry of a parameter (a flat device array of double).
  template <class Values>
  void parameter(const Values& values, const std::vector<double>& analytic) {
    auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values);
    for (std::size_t k = 0; k < host.extent(0); ++k)
      entry(host(k), [&](double v) {
        host(k) = v;
        Kokkos::deep_copy(values, host);
      }, analytic[k]);
  }

  double worst() const { return worst_; }
  double scale() const { return scale_; }

 private:
  /// The objective at the unmoved inputs: every entry is set back after its differences.
  double centre() {
    if (!centre_) centre_ = objective_();
    return *centre_;
  }

  std::function<double()> objective_;
  double h_;
  std::optional<double> centre_;
  double worst_ = 0, scale_ = 0;
};

/// A device array's values on the host, as the analytic side of GradientCheck::parameter.
template <class Values>
std::vector<double> host_values(const Values& values) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values);
  return std::vector<double>(host.data(), host.data() + host.extent(0));
}

}  // namespace camex::testing
