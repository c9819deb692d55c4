#pragma once
// Small host <-> device copies for the example programs' checks: a row-major host vector to a device matrix and
// back. Not for training loops (each call allocates and synchronises).
#include <camex/camex.hpp>

#include <cstddef>
#include <vector>

namespace camex::examples {

template <class T, class Space = Kokkos::DefaultExecutionSpace>
Matrix<T, Space> device_matrix(const std::vector<double>& values, std::size_t rows, std::size_t cols) {
  Matrix<T, Space> v("v", rows, cols);
  auto h = Kokkos::create_mirror_view(v);
  for (std::size_t k = 0; k < rows * cols; ++k) h(k / cols, k % cols) = static_cast<T>(values[k]);
  Kokkos::deep_copy(v, h);
  return v;
}

template <class V>
std::vector<double> host_values(const V& v) {
  const auto h = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, v);
  std::vector<double> out(v.size());
  for (std::size_t k = 0; k < out.size(); ++k) out[k] = h(k / v.extent(1), k % v.extent(1));
  return out;
}

}  // namespace camex::examples
