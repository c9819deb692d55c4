#pragma once
// Double-precision references for the curvature transform: explicit Kronecker products of the factors, and a
// helper that sets a transform's factors to random values near the identity and returns them.

#include <Kokkos_Core.hpp>

#include <array>
#include <random>
#include <vector>

#include "camex/merge/axis/curvature.hpp"
#include "testing.hpp"

namespace camex::testing {

inline HostMatrix kron(const HostMatrix& a, const HostMatrix& b) {
  HostMatrix k(a.rows() * b.rows(), a.cols() * b.cols());
  for (Eigen::Index i = 0; i < a.rows(); ++i)
    for (Eigen::Index j = 0; j < a.cols(); ++j) k.block(i * b.rows(), j * b.cols(), b.rows(), b.cols()) = a(i, j) * b;
  return k;
}

/// Sets every factor to I + 0.3 * noise (so the transform is far from a multiple of the identity) and returns
/// the factors as host matrices [mode][rho * n + i] (identity for unfactored modes).
template <class T>
std::array<std::vector<HostMatrix>, 4> randomise_factors(CurvatureTransform<T, Space>& transform, std::size_t experts,
                                                         std::mt19937_64& gen) {
  std::array<std::vector<HostMatrix>, 4> out;
  for (int k = 0; k < 4; ++k) {
    const std::size_t d = transform.extents()[k];
    auto stack = transform.factors(k);
    auto host = Kokkos::create_mirror_view(stack);
    for (std::size_t b = 0; b < transform.rank() * experts; ++b) {
      HostMatrix f = HostMatrix::Identity(d, d);
      if (stack.size() != 0) {
        f = rounded<T>(f + 0.3 * random_matrix(d, d, gen));
        for (std::size_t e = 0; e < d * d; ++e) host(b * d * d + e) = static_cast<T>(f.data()[e]);
      }
      out[k].push_back(f);
    }
    if (stack.size() != 0) Kokkos::deep_copy(stack, host);
  }
  return out;
}

/// M_i(tau) = sum_rho (A (x) B) tau (C (x) D)^T for a tau of shape rows x cols.
inline HostMatrix reference_transform(const std::array<std::vector<HostMatrix>, 4>& f, std::size_t rank, std::size_t experts,
                               std::size_t i, const HostMatrix& tau) {
  HostMatrix out = HostMatrix::Zero(tau.rows(), tau.cols());
  for (std::size_t rho = 0; rho < rank; ++rho) {
    const std::size_t b = rho * experts + i;
    out += kron(f[0][b], f[1][b]) * tau * kron(f[2][b], f[3][b]).transpose();
  }
  return out;
}

inline HostMatrix reshape(const HostMatrix& row, std::size_t rows, std::size_t cols) {
  return Eigen::Map<const HostMatrix>(row.data(), rows, cols);
}

}  // namespace camex::testing
