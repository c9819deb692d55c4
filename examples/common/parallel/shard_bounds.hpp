#pragma once
// How the entries of a data-parallel run's gradients (and, with --shard-optimizer, its optimiser state) are cut
// among the ranks: contiguous shards in rank order, each starting and ending on one of the allowed cuts (AdamW's norm
// chunks: train/adamw.hpp, norm_chunk_bounds), so a shard's norm and update have the bits of the unsharded ones.

#include <camex/core/error.hpp>

#include <algorithm>
#include <cstddef>
#include <string>
#include <vector>

namespace camex::examples {

/// The P + 1 positions where the shards of `ranks` ranks begin and end, 0 first and the last cut last: for rank r
/// the cut nearest r / P of the way (the lower one on a tie), so the shards are as equal as the cuts allow; a shard
/// may be empty when there are fewer cuts than ranks.
inline std::vector<std::size_t> shard_bounds(const std::vector<std::size_t>& cuts, int ranks) {
  constexpr const char* fn = "shard_bounds";
  if (ranks < 1) throw argument_error(fn, "ranks", "at least one rank", concat(ranks));
  if (cuts.empty() || cuts.front() != 0) throw argument_error(fn, "cuts", "positions starting at 0", cuts.empty() ? "none" : concat("a first of ", cuts.front()));
  for (std::size_t i = 1; i < cuts.size(); ++i)
    if (cuts[i] <= cuts[i - 1])
      throw argument_error(fn, "cuts", "increasing positions", concat(cuts[i - 1], " then ", cuts[i], " at ", i));
  const std::size_t total = cuts.back(), p = static_cast<std::size_t>(ranks);
  std::vector<std::size_t> bounds{0};
  for (std::size_t r = 1; r < p; ++r) {
    const std::size_t target = r * total / p;
    const auto above = std::upper_bound(cuts.begin(), cuts.end(), target);  // cuts.front() = 0 <= target
    const std::size_t below = *(above - 1);
    bounds.push_back(above != cuts.end() && *above - target < target - below ? *above : below);
  }
  bounds.push_back(total);
  return bounds;
}

}  // namespace camex::examples
