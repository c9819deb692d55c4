#pragma once
// What every transport of the gradient reduction shares (MPI through host memory: gradient_reduction.hpp; NCCL
// between GPUs: nccl_gradient_reduction.hpp): the checks of its arguments, the ranks' shards, the buckets a step is
// sent in and which group of the backward ends each, the order the groups must come in, the copies between the
// tensors and a packed buffer, the timers, and the host collectives of a sharded optimiser (the norm's chunk sums,
// the moments gathered for a checkpoint), which stay on MPI whatever moves the gradients.
//
// A bucket is consecutive backward groups' tensors packed in flat order, so that each rank's entries of it (those
// in its shard) are one run: rank r's run is `counts[r]` entries at `displacements[r]` in the bucket; this rank's
// pieces of the bucket (every rank's copy of its run) are `ranks x counts[me]` entries at `pieces`.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "common/parallel/ranks.hpp"
#include "common/parallel/shard_bounds.hpp"
#include "common/train/adamw.hpp"
#include "common/train/backward_groups.hpp"
#include "common/train/parameters.hpp"

namespace camex::examples {

/// What a step's reduction leaves on each rank.
enum class ReducedGradients {
  everywhere,  ///< every entry's sum, on every rank (an unsharded optimiser)
  own_shard,   ///< the sums of the rank's shard alone (a sharded optimiser, which then all-gathers the values)
};

/// How a step's reduction is cut into collectives.
struct ReductionPlan {
  ReducedGradients result = ReducedGradients::everywhere;
  /// The model's backward groups (train/backward_groups.hpp); empty: one group of every tensor.
  BackwardGroups groups;
  /// A bucket is sent once its groups hold at least this many entries, or its last group is the last one.
  std::size_t bucket_entries = std::numeric_limits<std::size_t>::max();
};

/// Every rank's share weight, in rank order.
inline std::vector<double> share_weights(const Ranks& ranks, std::size_t whole) {
  std::vector<double> weights;
  for (int r = 0; r < ranks.size(); ++r) weights.push_back(batch_share(whole, r, ranks.size()).weight());
  return weights;
}

/// The ordered sum's step: sum + weight x, rounded once. Spelled as a fused multiply-add so that no compiler may
/// choose between one rounding and two (nvcc contracts a * b + c by default, GCC where the target has FMA).
KOKKOS_INLINE_FUNCTION double weighted_add(double sum, double weight, double x) { return ::fma(weight, x, sum); }

/// run(k) <- the sum over ranks r, in rank order, of weights(r) * pieces(r * n + k), taken in double and rounded once
/// (n = run's length): the one sum of every transport, so that they agree bit for bit.
template <class Exec, class Pieces, class Weights, class Run>
void sum_in_rank_order(const Exec& exec, const Pieces& pieces, const Weights& weights, const Run& run) {
  using Value = typename Run::non_const_value_type;
  const std::size_t n = run.extent(0), ranks = weights.extent(0);
  Kokkos::parallel_for("GradientReduction[sum]", Kokkos::RangePolicy<Exec>(exec, 0, n), KOKKOS_LAMBDA(std::size_t k) {
    double sum = 0;
    for (std::size_t r = 0; r < ranks; ++r) sum = weighted_add(sum, weights(r), static_cast<double>(pieces(r * n + k)));
    run(k) = static_cast<Value>(sum);
  });
}

/// Adds the seconds of its lifetime to a total.
class ScopeTimer {
 public:
  explicit ScopeTimer(double& total) : total_(total) {}
  ~ScopeTimer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began_).count(); }
  ScopeTimer(const ScopeTimer&) = delete;
  ScopeTimer& operator=(const ScopeTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point began_ = std::chrono::steady_clock::now();
};

template <class T, class Space>
class ReductionBuckets {
 public:
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "the gradient reduction moves float or double gradients");

  struct Bucket {
    std::vector<std::size_t> tensors;  // ascending: flat order
    std::size_t offset = 0, size = 0, pieces = 0;
    std::vector<int> counts, displacements, piece_counts, piece_displacements;
  };

  /// `tensors`' gradients across `ranks`, rank r weighted by weights[r], rank r summing the entries
  /// [bounds[r], bounds[r + 1]) of them (shard_bounds), in the buckets of `plan`. `fn` names the caller in errors.
  ReductionBuckets(const char* fn, const Ranks& ranks, std::vector<NamedTensor<T, Space>> tensors, std::vector<double> weights,
                   const std::vector<std::size_t>& bounds, ReductionPlan plan)
      : ranks_(ranks), tensors_(std::move(tensors)), weights_(std::move(weights)), result_(plan.result) {
    if (weights_.size() != static_cast<std::size_t>(ranks.size()))
      throw argument_error(fn, "weights", "one weight for each of the " + std::to_string(ranks.size()) + " ranks",
                           concat(weights_.size(), " weights"));
    std::vector<std::size_t> flat_first;  // each tensor's first entry in flat order
    for (const auto& t : tensors_) {
      flat_first.push_back(total_);
      total_ += t.flat.gradient.extent(0);
    }
    if (total_ > static_cast<std::size_t>(INT_MAX))
      throw argument_error(fn, "tensors", "at most " + std::to_string(INT_MAX) + " gradient entries (the collectives' counts are int)",
                           concat(total_));
    const auto p = static_cast<std::size_t>(ranks.size());
    bool ordered = bounds.size() == p + 1 && bounds.front() == 0 && bounds.back() == total_;
    for (std::size_t r = 0; ordered && r < p; ++r) ordered = bounds[r] <= bounds[r + 1];
    if (!ordered)
      throw argument_error(fn, "bounds", concat(p + 1, " ordered positions from 0 to the ", total_, " entries"),
                           concat(bounds.size(), " positions"));
    for (std::size_t r = 0; r < p; ++r) {
      shard_offsets_.push_back(static_cast<int>(bounds[r]));
      shard_sizes_.push_back(static_cast<int>(bounds[r + 1] - bounds[r]));
    }
    const std::size_t rank = static_cast<std::size_t>(ranks.rank());
    shard_ = {bounds[rank], bounds[rank + 1]};
    if (p * shard_.size() > static_cast<std::size_t>(INT_MAX))  // every rank's piece of the shard, received at once
      throw argument_error(fn, "bounds", concat("shards of at most ", INT_MAX / static_cast<int>(p), " entries on ", p, " ranks"),
                           concat("a shard of ", shard_.size(), " on rank ", rank));
    plan_buckets(fn, plan, flat_first, bounds);
  }

  /// The entries this rank sums (and, with the optimiser sharded, updates).
  FlatRange shard() const { return shard_; }
  /// The buckets a step's gradients are sent in.
  std::size_t buckets() const { return buckets_.size(); }

  /// Gradient entries each rank sends per step (and receives): its shard's pieces to the others, then its summed
  /// shard to the others.
  std::size_t values_sent_per_step() const {
    const std::size_t mine = shard_.size();
    return total_ - mine + mine * (shard_sizes_.size() - 1);
  }
  /// Seconds spent combining since construction: while the backward runs (packing and starting buckets), after it
  /// (complete, and with a sharded optimiser the gathers of the norm's parts and of the values: the reduction's
  /// time the backward did not hide), of them in MPI calls (the transfers, and the wait for the slowest rank); and
  /// how many steps were combined. A transport that only queues work on a stream counts the queueing.
  double seconds() const { return seconds_; }
  double after_backward_seconds() const { return after_backward_seconds_; }
  double mpi_seconds() const { return mpi_seconds_; }
  std::size_t calls() const { return calls_; }

  /// whole <- every rank's `mine` (its shard's entries, from a host array) in flat order, on rank 0 alone.
  void gather_to_leader(const T* mine, T* whole) const {
    if (ranks_.size() == 1) {
      std::copy(mine, mine + shard_.size(), whole);
      return;
    }
#if CAMEX_EXAMPLES_WITH_MPI
    Ranks::check(MPI_Gatherv(mine, static_cast<int>(shard_.size()), mpi_type(), whole, shard_sizes_.data(), shard_offsets_.data(),
                             mpi_type(), 0, MPI_COMM_WORLD),
                 "MPI_Gatherv");
#endif
  }

  /// The chunk sums of AdamW's norm: every rank's chunks (those of its shard, `counts` and `offsets` in chunks per
  /// rank) onto every rank, in place.
  void all_gather_parts(std::span<double> parts, const std::vector<int>& counts, const std::vector<int>& offsets) {
    if (ranks_.size() == 1) return;
#if CAMEX_EXAMPLES_WITH_MPI
    const ScopeTimer timer(seconds_), after(after_backward_seconds_), in_mpi(mpi_seconds_);
    Ranks::check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DOUBLE, parts.data(), counts.data(), offsets.data(), MPI_DOUBLE, MPI_COMM_WORLD),
                 "MPI_Allgatherv");
#else
    static_cast<void>(parts), static_cast<void>(counts), static_cast<void>(offsets);
#endif
  }

 protected:
  static constexpr std::size_t no_bucket = std::numeric_limits<std::size_t>::max();
#if CAMEX_EXAMPLES_WITH_MPI
  static MPI_Datatype mpi_type() { return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE; }
#endif

  /// Takes group `group` as the next one ready (groups come in order, each once a step); returns the bucket it
  /// ends, or no_bucket.
  std::size_t accept(std::size_t group) {
    if (group != next_group_ || group >= bucket_of_group_.size())
      throw argument_error("GradientReduction::gradients_ready", "group",
                           concat("group ", next_group_, " of ", bucket_of_group_.size(), " (in backward's order, once a step)"),
                           concat(group));
    ++next_group_;
    return bucket_of_group_[group];
  }
  /// The buckets the groups not yet ready end, in order, as complete() takes them ready; the next step starts.
  std::vector<std::size_t> remaining_buckets() {
    std::vector<std::size_t> out;
    for (; next_group_ < bucket_of_group_.size(); ++next_group_)
      if (bucket_of_group_[next_group_] != no_bucket) out.push_back(bucket_of_group_[next_group_]);
    next_group_ = 0;
    return out;
  }
  /// This rank's run of bucket b, [first, last) within it.
  std::pair<std::size_t, std::size_t> own_run(const Bucket& b) const {
    const std::size_t me = static_cast<std::size_t>(ranks_.rank());
    const auto first = static_cast<std::size_t>(b.displacements[me]);
    return {first, first + static_cast<std::size_t>(b.counts[me])};
  }

  /// The entries [lo, hi) of bucket `b` (counted within it) of its tensors' `field`, into `packed` (`to_packed`) or
  /// back, queued on `space`.
  template <class Packed>
  void copy(const Space& space, typename Parameter<T, Space>::Flat Parameter<T, Space>::*field, const Packed& packed,
            const Bucket& b, std::size_t lo, std::size_t hi, bool to_packed) const {
    std::size_t at = 0;
    for (const std::size_t i : b.tensors) {
      const auto& flat = tensors_[i].flat.*field;
      const std::size_t n = flat.extent(0);
      const std::size_t from = std::clamp(lo, at, at + n), to = std::clamp(hi, at, at + n);
      if (from < to) {
        const auto in_packed = Kokkos::subview(packed, std::make_pair(b.offset + from, b.offset + to));
        const auto in_tensor = Kokkos::subview(flat, std::make_pair(from - at, to - at));
        if (to_packed)
          Kokkos::deep_copy(space, in_packed, in_tensor);
        else
          Kokkos::deep_copy(space, in_tensor, in_packed);
      }
      at += n;
    }
  }

  const Ranks& ranks_;
  std::vector<NamedTensor<T, Space>> tensors_;
  std::vector<double> weights_;
  ReducedGradients result_;
  std::vector<int> shard_offsets_, shard_sizes_;
  FlatRange shard_;
  std::size_t total_ = 0;
  std::vector<Bucket> buckets_;
  double seconds_ = 0, after_backward_seconds_ = 0, mpi_seconds_ = 0;
  std::size_t calls_ = 0;

 private:
  void plan_buckets(const char* fn, ReductionPlan& plan, const std::vector<std::size_t>& flat_first,
                    const std::vector<std::size_t>& bounds) {
    if (plan.groups.empty()) {
      plan.groups.emplace_back();
      for (std::size_t i = 0; i < tensors_.size(); ++i) plan.groups.back().push_back(i);
    }
    std::vector<std::size_t> seen(tensors_.size(), 0);
    for (const auto& group : plan.groups)
      for (const std::size_t i : group) {
        if (i >= tensors_.size()) throw argument_error(fn, "plan.groups", concat("indices of the ", tensors_.size(), " tensors"), concat(i));
        ++seen[i];
      }
    for (std::size_t i = 0; i < tensors_.size(); ++i)
      if (seen[i] != 1)
        throw argument_error(fn, "plan.groups", concat("every one of the ", tensors_.size(), " tensors in one group"),
                             concat("tensor ", i, " (", tensors_[i].name, ") in ", seen[i]));
    const std::size_t p = shard_sizes_.size(), me = static_cast<std::size_t>(ranks_.rank());
    Bucket open;
    for (std::size_t g = 0; g < plan.groups.size(); ++g) {
      for (const std::size_t i : plan.groups[g]) {
        open.tensors.push_back(i);
        open.size += tensors_[i].flat.gradient.extent(0);
      }
      if (g + 1 < plan.groups.size() && open.size < std::max<std::size_t>(plan.bucket_entries, 1)) {
        bucket_of_group_.push_back(no_bucket);
        continue;
      }
      std::sort(open.tensors.begin(), open.tensors.end());
      open.counts.assign(p, 0);
      for (const std::size_t i : open.tensors) {
        const std::size_t first = flat_first[i], end = first + tensors_[i].flat.gradient.extent(0);
        for (std::size_t r = 0; r < p; ++r)
          open.counts[r] += static_cast<int>(std::clamp(bounds[r + 1], first, end) - std::clamp(bounds[r], first, end));
      }
      int at = 0;
      for (std::size_t r = 0; r < p; ++r) {
        open.displacements.push_back(at);
        at += open.counts[r];
        open.piece_counts.push_back(open.counts[me]);
        open.piece_displacements.push_back(static_cast<int>(r) * open.counts[me]);
      }
      if (!buckets_.empty()) {
        const Bucket& before = buckets_.back();
        open.offset = before.offset + before.size;
        open.pieces = before.pieces + p * static_cast<std::size_t>(before.counts[me]);
      }
      bucket_of_group_.push_back(buckets_.size());
      buckets_.push_back(std::move(open));
      open = Bucket{};
    }
  }

  std::vector<std::size_t> bucket_of_group_;  // the bucket a group ends, or no_bucket
  std::size_t next_group_ = 0;
};

}  // namespace camex::examples
