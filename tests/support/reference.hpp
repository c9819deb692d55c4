#pragma once
// Plain host references shared by several test bodies.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "camex/kernels/top_k.hpp"
#include "camex/merge/ties_mask.hpp"

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

/// mergekit's TIES factors for deltas[i][p] (trim by reference_top_k_mask, weighted election, disjoint mean,
/// lambda), each rounded to T as camex stores it.
template <class T>
std::vector<std::vector<double>> reference_ties_factors(const std::vector<std::vector<double>>& deltas,
                                                        const std::vector<double>& w, const TiesOptions& options) {
  const std::size_t n = deltas.size(), p = deltas[0].size();
  const std::size_t k = top_k_count("reference", options.density, p);
  std::vector<std::vector<std::uint8_t>> keep(n);
  for (std::size_t i = 0; i < n; ++i) keep[i] = reference_top_k_mask(deltas[i], k);
  std::vector<std::vector<double>> factor(n, std::vector<double>(p));
  const auto sign = [](double x) { return (x > 0) - (x < 0); };
  for (std::size_t j = 0; j < p; ++j) {
    std::vector<double> wd(n);
    double sum = 0;
    int votes = 0;
    for (std::size_t i = 0; i < n; ++i) {
      wd[i] = keep[i][j] ? w[i] * deltas[i][j] : 0.0;
      sum += wd[i];
      votes += sign(wd[i]);
    }
    const int elected = (options.election == SignElection::sum ? sum >= 0 : votes >= 0) ? 1 : -1;
    double agreeing = 0;
    for (std::size_t i = 0; i < n; ++i) agreeing += sign(wd[i]) == elected ? w[i] : 0.0;
    const double scale = options.lambda / (options.normalize && agreeing != 0 ? agreeing : 1.0);
    for (std::size_t i = 0; i < n; ++i) factor[i][j] = static_cast<T>(sign(wd[i]) == elected ? scale : 0.0);
  }
  return factor;
}

}  // namespace camex::testing
