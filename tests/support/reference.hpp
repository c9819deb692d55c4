#pragma once
// Plain host references shared by several test bodies.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace camex::testing {

/// The top-k mask a stable sort gives: the first k indices after ordering by |x| descending, ties by index
/// ascending (camex's documented tie-break).
template <class T>
std::vector<std::uint8_t> reference_top_k_mask(const std::vector<T>& row, std::size_t k) {
  std::vector<std::size_t> order(row.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return std::abs(row[a]) > std::abs(row[b]); });
  std::vector<std::uint8_t> mask(row.size(), 0);
  for (std::size_t i = 0; i < k; ++i) mask[order[i]] = 1;
  return mask;
}

}  // namespace camex::testing
