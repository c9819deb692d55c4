#pragma once
// Which part of a step's batch a process of a data-parallel run trains on (common/parallel/ranks.hpp).

#include <camex/core/error.hpp>

#include <algorithm>
#include <cstddef>
#include <string>

namespace camex::examples {

/// The share of a batch of `whole` items that rank `rank` of `ranks` trains on: items [first, first + count),
/// as equal as the division allows (the first whole % ranks ranks take one more).
struct BatchShare {
  std::size_t first = 0, count = 0, whole = 0;
  /// Its weight in the batch's mean: count / whole.
  double weight() const { return static_cast<double>(count) / static_cast<double>(whole); }
};

inline BatchShare batch_share(std::size_t whole, int rank, int ranks) {
  if (ranks < 1 || rank < 0 || rank >= ranks)
    throw argument_error("batch_share", "rank", "a rank in [0, " + std::to_string(ranks) + ")", concat(rank));
  const auto p = static_cast<std::size_t>(ranks), r = static_cast<std::size_t>(rank);
  if (whole < p)
    throw argument_error("batch_share", "whole", "a batch of at least one item for each of the " + std::to_string(p) + " processes",
                         concat(whole));
  const std::size_t base = whole / p, extra = whole % p;
  return {.first = r * base + std::min(r, extra), .count = base + (r < extra ? 1 : 0), .whole = whole};
}

/// The whole batch, for a process alone.
inline BatchShare whole_batch(std::size_t whole) { return {.first = 0, .count = whole, .whole = whole}; }

}  // namespace camex::examples
