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
// The buckets, shards, checks and the collectives of a sharded optimiser are common to every transport
// (reduction_buckets.hpp); this one moves the bytes with MPI through host memory, for every execution space (on Cuda,
// nccl_gradient_reduction.hpp moves them between GPUs instead where NCCL is found).
//
// With the optimiser sharded (ZeRO stage 1, --shard-optimizer, ReducedGradients::own_shard) the shards are the
// optimiser's: the all-gather of the gradients is left out, so each rank holds the whole batch's gradient of its
// shard only, updates that shard (train/adamw.hpp, with an owned range), and all_gather_values() hands every rank
// every updated shard: the same bytes, the moments held once across the ranks instead of on each, and the same bits
// as the unsharded update.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <utility>
#include <vector>

#include "common/parallel/ranks.hpp"
#include "common/parallel/reduction_buckets.hpp"

namespace camex::examples {

template <class T, class Space>
class GradientReduction : public ReductionBuckets<T, Space> {
  using Base = ReductionBuckets<T, Space>;
  using Bucket = typename Base::Bucket;
  using Base::buckets_;
  using Base::ranks_;
  using Base::result_;
  using Base::shard_;
  using Base::shard_sizes_;
  using Base::total_;
  using Base::weights_;

 public:
  /// Combines the gradients of `tensors` across `ranks`, rank r weighted by weights[r], rank r summing the entries
  /// [bounds[r], bounds[r + 1]) of them (shard_bounds), in the buckets of `plan`.
  GradientReduction(const Ranks& ranks, std::vector<NamedTensor<T, Space>> tensors, std::vector<double> weights,
                    const std::vector<std::size_t>& bounds, ReductionPlan plan = {})
      : Base("GradientReduction", ranks, std::move(tensors), std::move(weights), bounds, std::move(plan)),
        progress_(buckets_.size()) {
    const auto p = static_cast<std::size_t>(ranks.size());
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

  /// Group `group` of the plan is final (groups come in order, each once a step): where it ends a bucket, that
  /// bucket is packed and its exchange started; the buckets already under way are moved on.
  void gradients_ready(const Space& space, std::size_t group) {
    const std::size_t b = this->accept(group);
    if (ranks_.size() == 1) return;
    const ScopeTimer timer(this->seconds_);
    if (b != Base::no_bucket) start_exchange(space, b);
    move_on(space, false);
  }

  /// Ends the step's reduction (groups not yet ready are taken as ready now): every tensor's gradient is the
  /// weighted sum over ranks, or (ReducedGradients::own_shard) the entries of this rank's shard are.
  void complete(const Space& space) {
    const std::vector<std::size_t> remaining = this->remaining_buckets();
    if (ranks_.size() == 1) return;
    const ScopeTimer timer(this->seconds_), after(this->after_backward_seconds_);
    for (const std::size_t b : remaining) start_exchange(space, b);
    move_on(space, true);
    for (Progress& p : progress_) p.state = State::waiting;
    ++this->calls_;
  }

  /// Every rank's values <- every rank's shard of them (after each has updated its own).
  void all_gather_values(const Space& space) {
    if (ranks_.size() == 1) return;
    const ScopeTimer timer(this->seconds_), after(this->after_backward_seconds_);
    for (const Bucket& b : buckets_) {
      const auto [first, last] = this->own_run(b);
      this->copy(space, &Parameter<T, Space>::value, packed_, b, first, last, true);
    }
    space.fence();
    for (std::size_t b = 0; b < buckets_.size(); ++b) start_gather(b);
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      finished(progress_[b].gather, true);
      this->copy(space, &Parameter<T, Space>::value, packed_, buckets_[b], 0, buckets_[b].size, false);
      progress_[b].state = State::waiting;
    }
    space.fence();
  }

 private:
#if CAMEX_EXAMPLES_WITH_MPI
  using Request = MPI_Request;
  static constexpr Request no_request() { return MPI_REQUEST_NULL; }
#else
  using Request = int;
  static constexpr Request no_request() { return 0; }
#endif
  enum class State { waiting, exchanging, gathering, done };
  /// Where a bucket is in the step.
  struct Progress {
    State state = State::waiting;
    Request exchange = no_request(), gather = no_request();
  };

  /// Packs bucket b's gradients and starts its exchange: each rank's run of it to that rank, every rank's copy of
  /// this rank's run into pieces_.
  void start_exchange(const Space& space, std::size_t b) {
    const Bucket& bucket = buckets_[b];
    this->copy(space, &Parameter<T, Space>::gradient, packed_, bucket, 0, bucket.size, true);
    space.fence();
#if CAMEX_EXAMPLES_WITH_MPI
    const ScopeTimer in_mpi(this->mpi_seconds_);
    Ranks::check(MPI_Ialltoallv(packed_.data() + bucket.offset, bucket.counts.data(), bucket.displacements.data(),
                                Base::mpi_type(), pieces_.data() + bucket.pieces, bucket.piece_counts.data(),
                                bucket.piece_displacements.data(), Base::mpi_type(), exchanges_, &progress_[b].exchange),
                 "MPI_Ialltoallv");
#endif
    progress_[b].state = State::exchanging;
  }

  /// Starts the gather of every rank's run of bucket b, in place in packed_.
  void start_gather(std::size_t b) {
#if CAMEX_EXAMPLES_WITH_MPI
    const Bucket& bucket = buckets_[b];
    const ScopeTimer in_mpi(this->mpi_seconds_);
    Ranks::check(MPI_Iallgatherv(MPI_IN_PLACE, 0, Base::mpi_type(), packed_.data() + bucket.offset, bucket.counts.data(),
                                 bucket.displacements.data(), Base::mpi_type(), gathers_, &progress_[b].gather),
                 "MPI_Iallgatherv");
#endif
    progress_[b].state = State::gathering;
  }

  /// Whether `request` has completed (waiting for it where `block`).
  bool finished(Request& request, bool block) {
#if CAMEX_EXAMPLES_WITH_MPI
    const ScopeTimer in_mpi(this->mpi_seconds_);
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

  /// Moves every started bucket on as far as it has come (to the end, waiting, where `block`): a finished exchange
  /// is summed, then gathered (or, own_shard, its run unpacked); a finished gather is unpacked. Gathers start in
  /// bucket order on every rank, so a bucket whose exchange is still under way holds back the buckets after it.
  void move_on(const Space& space, bool block) {
    bool in_order = true;
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      Progress& p = progress_[b];
      if (p.state == State::exchanging && in_order) {
        if (!finished(p.exchange, block)) {
          in_order = false;
          continue;
        }
        sum_pieces(buckets_[b]);
        if (result_ == ReducedGradients::everywhere) {
          start_gather(b);
        } else {
          const auto [first, last] = this->own_run(buckets_[b]);
          unpack(space, buckets_[b], first, last);
          p.state = State::done;
        }
      }
      if (p.state == State::waiting || p.state == State::exchanging) in_order = false;
      if (p.state == State::gathering && finished(p.gather, block)) {
        unpack(space, buckets_[b], 0, buckets_[b].size);
        p.state = State::done;
      }
    }
  }

  /// The entries [lo, hi) of a bucket's packed run back into the tensors' gradients.
  void unpack(const Space& space, const Bucket& b, std::size_t lo, std::size_t hi) {
    this->copy(space, &Parameter<T, Space>::gradient, packed_, b, lo, hi, false);
    space.fence();
  }

  /// This rank's run of bucket `b` in packed_ <- the weighted sum of every rank's piece of it, each entry in rank
  /// order.
  void sum_pieces(const Bucket& b) {
    const auto [first, last] = this->own_run(b);
    const std::size_t mine = last - first, ranks = shard_sizes_.size();
    const Kokkos::DefaultHostExecutionSpace host;
    sum_in_rank_order(host, Kokkos::subview(pieces_, std::make_pair(b.pieces, b.pieces + ranks * mine)),
                      Kokkos::View<const double*, Kokkos::HostSpace>(weights_.data(), weights_.size()),
                      Kokkos::subview(packed_, std::make_pair(b.offset + first, b.offset + last)));
    host.fence();
  }

  std::vector<Progress> progress_;
  Kokkos::View<T*, Kokkos::HostSpace> packed_, pieces_;
#if CAMEX_EXAMPLES_WITH_MPI
  MPI_Comm exchanges_ = MPI_COMM_NULL, gathers_ = MPI_COMM_NULL;
#endif
};

}  // namespace camex::examples
