#pragma once
// Central finite differences of a scalar objective in double, entry by entry, against the analytic gradients a
// backward produced. Keeps the worst absolute difference and the largest difference quotient, so a test states
// one bound relative to the gradients' size (and can check that they are not all zero).

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>
#include <vector>

#include "testing.hpp"

namespace camex::testing {

class GradientCheck {
 public:
  /// `objective` recomputes the scalar from the current inputs; h is the step of the differences.
  explicit GradientCheck(std::function<double()> objective, double h = 1e-6) : objective_(std::move(objective)), h_(h) {}

  /// One entry, now `keep`, moved by set(value).
  void entry(double keep, const std::function<void(double)>& set, double analytic) {
    set(keep + h_);
    const double up = objective_();
    set(keep - h_);
    const double down = objective_();
    set(keep);
    const double numeric = (up - down) / (2 * h_);
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
  std::function<double()> objective_;
  double h_;
  double worst_ = 0, scale_ = 0;
};

/// A device array's values on the host, as the analytic side of GradientCheck::parameter.
template <class Values>
std::vector<double> host_values(const Values& values) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, values);
  return std::vector<double>(host.data(), host.data() + host.extent(0));
}

}  // namespace camex::testing
