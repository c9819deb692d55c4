#pragma once
// The ranks' side of a sharded optimiser (ZeRO stage 1, --shard-optimizer): each rank's AdamW owns the entries of its
// shard of the gradient reduction (parallel/gradient_reduction.hpp), so the ranks must agree on what an unsharded
// AdamW computes from all entries at once: the norm (from every shard's chunk sums, gathered onto every rank and
// summed in the one chunk order), the count of entries an update left non-finite, and, for a checkpoint, the whole
// moments (gathered onto rank 0). Without sharding each of these is AdamW's own.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "common/parallel/reduction_buckets.hpp"
#include "common/parallel/ranks.hpp"
#include "common/train/adamw.hpp"
#include "common/train/checkpoint.hpp"

namespace camex::examples {

template <class T, class Space>
class OptimiserShards {
 public:
  /// `cuts`: AdamW's norm chunk bounds (norm_chunk_bounds); `bounds`: the ranks' shards, cut from them (shard_bounds);
  /// `sharded`: whether every rank's AdamW owns its shard alone (alike on every rank: which collectives a step calls
  /// must not depend on one rank's shard, which may be empty or everything).
  OptimiserShards(const Ranks& ranks, ReductionBuckets<T, Space>& reduction, const AdamW<T, Space>& adam,
                  const std::vector<std::size_t>& cuts, const std::vector<std::size_t>& bounds, bool sharded)
      : ranks_(ranks), reduction_(reduction), adam_(adam), sharded_(sharded) {
    const auto chunk = [&](std::size_t bound) {
      const auto at = std::lower_bound(cuts.begin(), cuts.end(), bound);
      if (at == cuts.end() || *at != bound)
        throw argument_error("OptimiserShards", "bounds", "shard bounds among the norm chunks' cuts", concat(bound));
      return static_cast<int>(at - cuts.begin());
    };
    for (std::size_t r = 0; r + 1 < bounds.size(); ++r) {
      chunk_offsets_.push_back(chunk(bounds[r]));
      chunk_counts_.push_back(chunk(bounds[r + 1]) - chunk_offsets_.back());
    }
  }

  bool sharded() const { return sharded_; }

  /// The global gradient norm, as an unsharded AdamW takes it.
  double gradient_norm(const Space& space) {
    if (!sharded_) return adam_.gradient_norm(space);
    return adam_.gradient_norm(space, [&](std::span<double> parts) { reduction_.all_gather_parts(parts, chunk_counts_, chunk_offsets_); });
  }

  /// How many entries the last update left non-finite, on every rank.
  std::uint64_t last_step_overflows() const {
    if (!sharded_) return adam_.last_step_overflows();
    return ranks_.sum(adam_.last_step_overflows());
  }

  /// Both moments of every entry, on rank 0, for a checkpoint (every rank must call it; the others get an empty
  /// pair). Held only as long as the caller keeps them: rank 0 holds its shard alone between checkpoints.
  HostMoments<T> gather_moments() const {
    HostMoments<T> gathered;
    if (ranks_.leader()) {
      gathered.m = Kokkos::View<T*, Kokkos::HostSpace>("optimiser_shards.m", whole_size());
      gathered.v = Kokkos::View<T*, Kokkos::HostSpace>("optimiser_shards.v", whole_size());
    }
    const auto mine_m = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, adam_.owned_first_moments());
    const auto mine_v = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, adam_.owned_second_moments());
    reduction_.gather_to_leader(mine_m.data(), gathered.m.data());
    reduction_.gather_to_leader(mine_v.data(), gathered.v.data());
    return gathered;
  }

 private:
  std::size_t whole_size() const {
    std::size_t total = 0;
    for (const auto& t : adam_.tensors()) total += t.flat.value.extent(0);
    return total;
  }

  const Ranks& ranks_;
  ReductionBuckets<T, Space>& reduction_;
  const AdamW<T, Space>& adam_;
  bool sharded_;
  std::vector<int> chunk_counts_, chunk_offsets_;
};

}  // namespace camex::examples
