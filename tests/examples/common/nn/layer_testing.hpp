#pragma once
// What the example layers' tests share: device copies of host matrices and vectors, and the gradient check of a
// layer against central finite differences of  f = sum(R .* y(inputs))  for a fixed random R, in double.
//
// Tolerance of the gradient check: with step h = 1e-6 the rounding of f contributes about eps |f| / h ~ 1e-9 and
// the truncation h^2 f''' / 6 ~ 1e-12 for the O(1) inputs and sizes used; a wrong or missing term is O(1). The
// bound 1e-6 relative to the largest difference quotient leaves three orders of margin on both sides.

#include "finite_difference.hpp"
#include "testing.hpp"

#include "common/nn/tensor.hpp"

#include <functional>
#include <string>
#include <vector>

namespace camex::testing {

template <class T>
using DeviceVec = examples::Vec<T, Space>;

/// A row of a host matrix as a device vector.
template <class T>
DeviceVec<T> to_device_vector(const HostMatrix& row, const char* label = "test") {
  DeviceVec<T> v(std::string(label), static_cast<std::size_t>(row.size()));
  auto host = Kokkos::create_mirror_view(v);
  for (Eigen::Index i = 0; i < row.size(); ++i) host(i) = static_cast<T>(row.data()[i]);
  Kokkos::deep_copy(v, host);
  return v;
}

/// A device vector as a [1, n] host matrix.
template <class V>
HostMatrix vector_to_host(const V& v) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, v);
  HostMatrix m(1, host.extent(0));
  for (std::size_t i = 0; i < host.extent(0); ++i) m(0, i) = static_cast<double>(host(i));
  return m;
}

/// Token ids (or targets) in Space's memory.
inline examples::TokenIds<Space> device_token_ids(const std::vector<std::int32_t>& ids) {
  Kokkos::View<std::int32_t*, Space::memory_space> v("tokens", ids.size());
  auto host = Kokkos::create_mirror_view(v);
  for (std::size_t i = 0; i < ids.size(); ++i) host(i) = ids[i];
  Kokkos::deep_copy(v, host);
  return v;
}

/// One operand of a layer under test: its values, and whether the check differentiates it.
struct Operand {
  std::string name;
  HostMatrix value;
  bool differentiable = true;
};

/// `forward(values)` is y; `backward(values, R)` the gradients of sum(R .* y), one per operand (ignored where not
/// differentiable). Checks every differentiable entry against central differences and that the gradients are
/// not all zero.
inline void check_layer_gradients(std::vector<Operand>& operands,
                                  const std::function<HostMatrix(const std::vector<HostMatrix>&)>& forward,
                                  const std::function<std::vector<HostMatrix>(const std::vector<HostMatrix>&, const HostMatrix&)>& backward,
                                  std::mt19937_64& gen) {
  const auto values = [&] {
    std::vector<HostMatrix> v;
    for (const auto& o : operands) v.push_back(o.value);
    return v;
  };
  const HostMatrix y = forward(values());
  const HostMatrix r = random_matrix(y.rows(), y.cols(), gen);
  const std::vector<HostMatrix> analytic = backward(values(), r);
  BOOST_REQUIRE_EQUAL(analytic.size(), operands.size());
  for (std::size_t i = 0; i < operands.size(); ++i) {
    if (!operands[i].differentiable) continue;
    BOOST_TEST_CONTEXT("d/d " << operands[i].name) {
      GradientCheck check([&] { return (forward(values()).array() * r.array()).sum(); });
      check.matrix(operands[i].value, analytic[i]);
      BOOST_TEST(check.scale() > 0.0);
      BOOST_TEST(check.worst() <= 1e-6 * check.scale(), "worst " << check.worst() << ", scale " << check.scale());
    }
  }
}

/// Every operand rounded to T: what a T kernel receives.
template <class T>
std::vector<HostMatrix> rounded_all(const std::vector<HostMatrix>& values) {
  std::vector<HostMatrix> out;
  for (const auto& v : values) out.push_back(rounded<T>(v));
  return out;
}

/// Largest |got - expected| relative to the largest |expected| (or 1).
inline double relative_error(const HostMatrix& got, const HostMatrix& expected) {
  BOOST_REQUIRE_EQUAL(got.rows(), expected.rows());
  BOOST_REQUIRE_EQUAL(got.cols(), expected.cols());
  return (got - expected).cwiseAbs().maxCoeff() / std::max(1.0, expected.cwiseAbs().maxCoeff());
}

}  // namespace camex::testing
