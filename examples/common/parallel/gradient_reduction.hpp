#pragma once
// The gradients of every rank of a data-parallel run combined into the gradient of the whole batch:
//
//   g <- sum over ranks r, in rank order, of w_r g_r        w_r = the rank's share of the batch (its weight)
//
// taken in double and rounded once, so the result has the same bits on every rank, in every run with the same
// number of ranks, whatever the MPI library's own reduction algorithms. The gradients (one arena and the library
// components' tensors) are cut into one contiguous shard per rank in flat order. Each rank sums its shard: an
// all-to-all hands it every rank's copy, and an all-gather then hands every rank every summed shard (a
// reduce-scatter and an all-gather, as a ring all-reduce sends: 2 (P - 1) / P of the gradients each way per rank).
//
// Overlap: the model's backward says when each group of tensors is final (train/backward_groups.hpp: a block's, in
// reverse order), and consecutive groups make a bucket of at least ReductionPlan::bucket_entries entries. As soon as
// a bucket is final it is packed into a host buffer (its tensors in flat order, so each rank's entries of it are one
// run) and its all-to-all starts (MPI_Ialltoallv); every later readiness moves the buckets under way on (MPI_Test):
// a finished exchange is summed and its all-gather started (MPI_Iallgatherv), while the backward of the earlier
// blocks still runs. complete() waits for what is left. Every entry's sum is the same whatever the buckets, so the
// bits do not depend on them. Nothing is allocated after construction.
//
// With the optimiser sharded (ZeRO stage 1, --shard-optimizer, ReducedGradients::own_shard) the shards are the
// optimiser's: the all-gather of the gradients is left out, so each rank holds the whole batch's gradient of its
// shard only, updates that shard (train/adamw.hpp, with an owned range), and all_gather_values() hands every rank
// every updated shard: the same bytes, the moments held once across the ranks instead of on each, and the same bits
// as the unsharded update.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <limits>
#include <cstddef>
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

template <class T, class Space>
class GradientReduction {
 public:
  /// Combines the gradients of `tensors` across `ranks`, rank r weighted by weights[r], rank r summing the entries
  /// [bounds[r], bounds[r + 1]) of them (shard_bounds), in the buckets of `plan`.
  GradientReduction(const Ranks& ranks, std::vector<NamedTensor<T, Space>> tensors, std::vector<double> weights,
                    const std::vector<std::size_t>& bounds, ReductionPlan plan = {})
      : ranks_(ranks), tensors_(std::move(tensors)), weights_(std::move(weights)), result_(plan.result) {
    constexpr const char* fn = "GradientReduction";
    if (weights_.size() != static_cast<std::size_t>(ranks.size()))
      throw argument_error(fn, "weights", "one weight for each of the " + std::to_string(ranks.size()) + " ranks",
                           concat(weights_.size(), " weights"));
    std::vector<std::size_t> flat_first;  // each tensor's first entry in flat order
    for (const auto& t : tensors_) {
      flat_first.push_back(total_);
      total_ += t.flat.gradient.extent(0);
    }
    if (total_ > static_cast<std::size_t>(INT_MAX))
      throw argument_error(fn, "tensors", "at most " + std::to_string(INT_MAX) + " gradient entries (MPI's counts are int)",
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
    plan_buckets(plan, flat_first, bounds);
    if (p == 1) return;  // a process alone reduces nothing and needs no buffers
    packed_ = Kokkos::View<T*, Kokkos::HostSpace>("gradient_reduction.packed", total_);
    pieces_ = Kokkos::View<T*, Kokkos::HostSpace>("gradient_reduction.pieces", p * shard_.size());
#if CAMEX_EXAMPLES_WITH_MPI
    // The exchanges and the gathers of one step overlap, and each rank may start a bucket's gather before or after
    // the next bucket's exchange: on one communicator they would have to start in one order on every rank.
    Ranks::check(MPI_Comm_dup(MPI_COMM_WORLD, &exchanges_), "MPI_Comm_dup");
    Ranks::check(MPI_Comm_dup(MPI_COMM_WORLD, &gathers_), "MPI_Comm_dup");
#endif
  }
  ~GradientReduction() {
#if CAMEX_EXAMPLES_WITH_MPI
    if (exchanges_ != MPI_COMM_NULL) MPI_Comm_free(&exchanges_);
    if (gathers_ != MPI_COMM_NULL) MPI_Comm_free(&gathers_);
#endif
  }
  GradientReduction(const GradientReduction&) = delete;
  GradientReduction& operator=(const GradientReduction&) = delete;

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
  /// Seconds spent combining since construction: in gradients_ready (packing and starting buckets while the
  /// backward runs), complete, and with a sharded optimiser the gathers of the norm's parts and of the values; of
  /// them after the backward (complete and the gathers: the reduction's time the backward did not hide), of them in
  /// the MPI calls (the transfers, and the wait for the slowest rank); and how many steps were combined.
  double seconds() const { return seconds_; }
  double after_backward_seconds() const { return after_backward_seconds_; }
  double mpi_seconds() const { return mpi_seconds_; }
  std::size_t calls() const { return calls_; }

  /// Group `group` of the plan is final (groups come in order, each once a step): where it ends a bucket, that
  /// bucket is packed and its exchange started; the buckets already under way are moved on.
  void gradients_ready(const Space& space, std::size_t group) {
    if (group != next_group_ || group >= bucket_of_group_.size())
      throw argument_error("GradientReduction::gradients_ready", "group",
                           concat("group ", next_group_, " of ", bucket_of_group_.size(), " (in backward's order, once a step)"),
                           concat(group));
    ++next_group_;
    if (ranks_.size() == 1) return;
    const Timer timer(seconds_);
    send_if_full(space, group);
    move_on(space, false);
  }

  /// Ends the step's reduction (groups not yet ready are taken as ready now): every tensor's gradient is the
  /// weighted sum over ranks, or (ReducedGradients::own_shard) the entries of this rank's shard are.
  void complete(const Space& space) {
    if (ranks_.size() == 1) {
      next_group_ = 0;
      return;
    }
    const Timer timer(seconds_), after(after_backward_seconds_);
    for (; next_group_ < bucket_of_group_.size(); ++next_group_) send_if_full(space, next_group_);
    next_group_ = 0;
    move_on(space, true);
    for (Bucket& b : buckets_) b.state = State::waiting;
    ++calls_;
  }

  /// Every rank's values <- every rank's shard of them (after each has updated its own).
  void all_gather_values(const Space& space) {
    if (ranks_.size() == 1) return;
    const Timer timer(seconds_), after(after_backward_seconds_);
    const std::size_t me = static_cast<std::size_t>(ranks_.rank());
    for (const Bucket& b : buckets_)
      copy(space, &Parameter<T, Space>::value, b, static_cast<std::size_t>(b.displacements[me]),
           static_cast<std::size_t>(b.displacements[me] + b.counts[me]), true);
    space.fence();
    for (Bucket& b : buckets_) start_gather(b);
    for (Bucket& b : buckets_) {
      wait(b.gather);
      copy(space, &Parameter<T, Space>::value, b, 0, b.size, false);
      b.state = State::waiting;
    }
    space.fence();
  }

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
    const Timer timer(seconds_), after(after_backward_seconds_), in_mpi(mpi_seconds_);
    Ranks::check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DOUBLE, parts.data(), counts.data(), offsets.data(), MPI_DOUBLE, MPI_COMM_WORLD),
                 "MPI_Allgatherv");
#else
    static_cast<void>(parts), static_cast<void>(counts), static_cast<void>(offsets);
#endif
  }

 private:
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "GradientReduction moves float or double gradients");
#if CAMEX_EXAMPLES_WITH_MPI
  static MPI_Datatype mpi_type() { return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE; }
  using Request = MPI_Request;
  static constexpr Request no_request() { return MPI_REQUEST_NULL; }
#else
  using Request = int;
  static constexpr Request no_request() { return 0; }
#endif
  static constexpr std::size_t no_bucket = std::numeric_limits<std::size_t>::max();

  /// Adds the seconds of its lifetime to a total.
  class Timer {
   public:
    explicit Timer(double& total) : total_(total) {}
    ~Timer() { total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began_).count(); }
    Timer(const Timer&) = delete;
    Timer& operator=(const Timer&) = delete;

   private:
    double& total_;
    std::chrono::steady_clock::time_point began_ = std::chrono::steady_clock::now();
  };

  enum class State { waiting, exchanging, gathering, done };

  /// Consecutive groups' tensors, sent together: packed at `offset` in flat order, so that each rank's entries of
  /// it are one run (`counts`, `displacements` within the bucket); this rank's pieces of it, one per rank, at
  /// `pieces` in pieces_.
  struct Bucket {
    std::vector<std::size_t> tensors;
    std::size_t offset = 0, size = 0, pieces = 0;
    std::vector<int> counts, displacements, piece_counts, piece_displacements;
    State state = State::waiting;
    Request exchange = no_request(), gather = no_request();
  };

  void plan_buckets(ReductionPlan& plan, const std::vector<std::size_t>& flat_first, const std::vector<std::size_t>& bounds) {
    if (plan.groups.empty()) {
      plan.groups.emplace_back();
      for (std::size_t i = 0; i < tensors_.size(); ++i) plan.groups.back().push_back(i);
    }
    std::vector<std::size_t> seen(tensors_.size(), 0);
    for (const auto& group : plan.groups)
      for (const std::size_t i : group) {
        if (i >= tensors_.size())
          throw argument_error("GradientReduction", "plan.groups", concat("indices of the ", tensors_.size(), " tensors"), concat(i));
        ++seen[i];
      }
    for (std::size_t i = 0; i < tensors_.size(); ++i)
      if (seen[i] != 1)
        throw argument_error("GradientReduction", "plan.groups", concat("every one of the ", tensors_.size(), " tensors in one group"),
                             concat("tensor ", i, " (", tensors_[i].name, ") in ", seen[i]));
    const std::size_t p = shard_sizes_.size(), me = static_cast<std::size_t>(ranks_.rank());
    Bucket open;
    for (std::size_t g = 0; g < plan.groups.size(); ++g) {
      for (const std::size_t i : plan.groups[g]) {
        open.tensors.push_back(i);
        open.size += tensors_[i].flat.gradient.extent(0);
      }
      const bool last = g + 1 == plan.groups.size();
      if (!last && open.size < std::max<std::size_t>(plan.bucket_entries, 1)) {
        bucket_of_group_.push_back(no_bucket);
        continue;
      }
      std::sort(open.tensors.begin(), open.tensors.end());
      open.counts.assign(p, 0);
      for (const std::size_t i : open.tensors) {
        const std::size_t first = flat_first[i], last_entry = first + tensors_[i].flat.gradient.extent(0);
        for (std::size_t r = 0; r < p; ++r) {
          const std::size_t lo = std::clamp(bounds[r], first, last_entry), hi = std::clamp(bounds[r + 1], first, last_entry);
          open.counts[r] += static_cast<int>(hi - lo);
        }
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

  /// Where group `group` ends a bucket, packs it and starts its exchange.
  void send_if_full(const Space& space, std::size_t group) {
    if (const std::size_t b = bucket_of_group_[group]; b != no_bucket) start_exchange(space, b);
  }

  /// Packs bucket b's gradients and starts its exchange: each rank's run of it to that rank, every rank's copy of
  /// this rank's run into pieces_.
  void start_exchange(const Space& space, std::size_t b) {
    Bucket& bucket = buckets_[b];
    copy(space, &Parameter<T, Space>::gradient, bucket, 0, bucket.size, true);
    space.fence();
#if CAMEX_EXAMPLES_WITH_MPI
    const Timer in_mpi(mpi_seconds_);
    Ranks::check(MPI_Ialltoallv(packed_.data() + bucket.offset, bucket.counts.data(), bucket.displacements.data(), mpi_type(),
                                pieces_.data() + bucket.pieces, bucket.piece_counts.data(), bucket.piece_displacements.data(),
                                mpi_type(), exchanges_, &bucket.exchange),
                 "MPI_Ialltoallv");
#endif
    bucket.state = State::exchanging;
  }

  /// Starts the gather of every rank's run of the bucket, in place in packed_.
  void start_gather(Bucket& bucket) {
#if CAMEX_EXAMPLES_WITH_MPI
    const Timer in_mpi(mpi_seconds_);
    Ranks::check(MPI_Iallgatherv(MPI_IN_PLACE, 0, mpi_type(), packed_.data() + bucket.offset, bucket.counts.data(),
                                 bucket.displacements.data(), mpi_type(), gathers_, &bucket.gather),
                 "MPI_Iallgatherv");
#endif
    bucket.state = State::gathering;
  }

  /// Whether `request` has completed (waiting for it where `block`).
  bool finished(Request& request, bool block) {
#if CAMEX_EXAMPLES_WITH_MPI
    const Timer in_mpi(mpi_seconds_);
    if (block) {
      Ranks::check(MPI_Wait(&request, MPI_STATUS_IGNORE), "MPI_Wait");
      return true;
    }
    int flag = 0;
    Ranks::check(MPI_Test(&request, &flag, MPI_STATUS_IGNORE), "MPI_Test");
    return flag != 0;
#else
    static_cast<void>(request), static_cast<void>(block);
    return true;
#endif
  }
  void wait(Request& request) { finished(request, true); }

  /// Moves every started bucket on as far as it has come (to the end, waiting, where `block`): a finished exchange
  /// is summed, then gathered (or, own_shard, its run unpacked); a finished gather is unpacked. Gathers start in
  /// bucket order on every rank, so a bucket whose exchange is still under way holds back the buckets after it.
  void move_on(const Space& space, bool block) {
    const std::size_t me = static_cast<std::size_t>(ranks_.rank());
    bool in_order = true;
    for (Bucket& b : buckets_) {
      if (b.state == State::exchanging && in_order) {
        if (!finished(b.exchange, block)) {
          in_order = false;
          continue;
        }
        sum_pieces(b);
        if (result_ == ReducedGradients::everywhere) {
          start_gather(b);
        } else {
          unpack(space, b, static_cast<std::size_t>(b.displacements[me]),
                 static_cast<std::size_t>(b.displacements[me] + b.counts[me]));
          b.state = State::done;
        }
      }
      if (b.state == State::waiting || b.state == State::exchanging) in_order = false;
      if (b.state == State::gathering && finished(b.gather, block)) {
        unpack(space, b, 0, b.size);
        b.state = State::done;
      }
    }
  }

  /// The entries [lo, hi) of a bucket's packed run back into the tensors' gradients.
  void unpack(const Space& space, const Bucket& b, std::size_t lo, std::size_t hi) {
    copy(space, &Parameter<T, Space>::gradient, b, lo, hi, false);
    space.fence();
  }

  /// The entries [lo, hi) of bucket `b` (counted within it) of its tensors' `field`, into packed_ (`to_packed`) or
  /// back.
  void copy(const Space& space, typename Parameter<T, Space>::Flat Parameter<T, Space>::*field, const Bucket& b,
            std::size_t lo, std::size_t hi, bool to_packed) {
    std::size_t at = 0;
    for (const std::size_t i : b.tensors) {
      const auto& flat = tensors_[i].flat.*field;
      const std::size_t n = flat.extent(0);
      const std::size_t from = std::clamp(lo, at, at + n), to = std::clamp(hi, at, at + n);
      if (from < to) {
        const auto in_packed = Kokkos::subview(packed_, std::make_pair(b.offset + from, b.offset + to));
        const auto in_tensor = Kokkos::subview(flat, std::make_pair(from - at, to - at));
        if (to_packed)
          Kokkos::deep_copy(space, in_packed, in_tensor);
        else
          Kokkos::deep_copy(space, in_tensor, in_packed);
      }
      at += n;
    }
  }

  /// This rank's run of bucket `b` in packed_ <- the weighted sum of every rank's piece of it, each entry in rank
  /// order.
  void sum_pieces(const Bucket& b) {
    const std::size_t me = static_cast<std::size_t>(ranks_.rank());
    const std::size_t mine = static_cast<std::size_t>(b.counts[me]), ranks = shard_sizes_.size();
    const auto pieces = Kokkos::subview(pieces_, std::make_pair(b.pieces, b.pieces + ranks * mine));
    const auto run = Kokkos::subview(packed_, std::make_pair(b.offset + static_cast<std::size_t>(b.displacements[me]),
                                                             b.offset + static_cast<std::size_t>(b.displacements[me]) + mine));
    const double* weights = weights_.data();
    Kokkos::parallel_for("GradientReduction[sum]", Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(0, mine),
                         [=](std::size_t k) {
                           double sum = 0;
                           for (std::size_t r = 0; r < ranks; ++r) sum += weights[r] * static_cast<double>(pieces(r * mine + k));
                           run(k) = static_cast<T>(sum);
                         });
    Kokkos::DefaultHostExecutionSpace().fence();
  }

  const Ranks& ranks_;
  std::vector<NamedTensor<T, Space>> tensors_;
  std::vector<double> weights_;
  ReducedGradients result_;
  std::vector<int> shard_offsets_, shard_sizes_;
  FlatRange shard_;
  std::size_t total_ = 0;
  std::vector<Bucket> buckets_;
  std::vector<std::size_t> bucket_of_group_;  // the bucket a group ends, or no_bucket
  std::size_t next_group_ = 0;
  Kokkos::View<T*, Kokkos::HostSpace> packed_, pieces_;
#if CAMEX_EXAMPLES_WITH_MPI
  MPI_Comm exchanges_ = MPI_COMM_NULL, gathers_ = MPI_COMM_NULL;
#endif
  double seconds_ = 0, after_backward_seconds_ = 0, mpi_seconds_ = 0;
  std::size_t calls_ = 0;
};

}  // namespace camex::examples
