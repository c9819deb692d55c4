#pragma once
// The gradients of every rank of a data-parallel run combined into the gradient of the whole batch:
//
//   g <- sum over ranks r, in rank order, of w_r g_r        w_r = the rank's share of the batch (its weight)
//
// taken in double and rounded once, so the result has the same bits on every rank, in every run with the same
// number of ranks, whatever the MPI library's own reduction algorithms. The gradients (one arena and the library
// components' tensors) are packed into one host buffer; the buffer is cut into one contiguous shard per rank; an
// all-to-all hands each rank every rank's copy of its shard, which it sums; an all-gather hands every rank every
// summed shard (a reduce-scatter and an all-gather, as a ring all-reduce sends: 2 (P - 1) / P of the buffer each
// way per rank). Nothing is allocated after construction.
//
// With the optimiser sharded (ZeRO stage 1, --shard-optimizer) the shards are the optimiser's: reduce_scatter()
// leaves each rank the whole batch's gradient of its shard only, the rank updates that shard (train/adamw.hpp, with
// an owned range), and all_gather_values() hands every rank every updated shard: the same bytes as reduce(), the
// moments held once across the ranks instead of on each, and the same bits as the unsharded update.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "common/parallel/ranks.hpp"
#include "common/parallel/shard_bounds.hpp"
#include "common/train/adamw.hpp"
#include "common/train/parameters.hpp"

namespace camex::examples {

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
  /// [bounds[r], bounds[r + 1]) of them (shard_bounds).
  GradientReduction(const Ranks& ranks, std::vector<NamedTensor<T, Space>> tensors, std::vector<double> weights,
                    const std::vector<std::size_t>& bounds)
      : ranks_(ranks), tensors_(std::move(tensors)), weights_(std::move(weights)) {
    constexpr const char* fn = "GradientReduction";
    if (weights_.size() != static_cast<std::size_t>(ranks.size()))
      throw argument_error(fn, "weights", "one weight for each of the " + std::to_string(ranks.size()) + " ranks",
                           concat(weights_.size(), " weights"));
    std::size_t total = 0;
    for (const auto& t : tensors_) total += t.flat.gradient.extent(0);
    if (total > static_cast<std::size_t>(INT_MAX))
      throw argument_error(fn, "tensors", "at most " + std::to_string(INT_MAX) + " gradient entries (MPI's counts are int)",
                           concat(total));
    const auto p = static_cast<std::size_t>(ranks.size());
    bool ordered = bounds.size() == p + 1 && bounds.front() == 0 && bounds.back() == total;
    for (std::size_t r = 0; ordered && r < p; ++r) ordered = bounds[r] <= bounds[r + 1];
    if (!ordered)
      throw argument_error(fn, "bounds", concat(p + 1, " ordered positions from 0 to the ", total, " entries"),
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
    for (std::size_t r = 0; r < p; ++r) piece_offsets_.push_back(static_cast<int>(r * shard_.size()));
    total_ = total;
    if (p == 1) return;  // a process alone reduces nothing and needs no buffers
    packed_ = Kokkos::View<T*, Kokkos::HostSpace>("gradient_reduction.packed", total);
    pieces_ = Kokkos::View<T*, Kokkos::HostSpace>("gradient_reduction.pieces", p * shard_.size());
  }

  /// The entries this rank sums (and, with the optimiser sharded, updates).
  FlatRange shard() const { return shard_; }

  /// Gradient entries each rank sends per step (and receives): its shard's pieces to the others, then its summed
  /// shard to the others.
  std::size_t values_sent_per_step() const {
    const std::size_t mine = shard_.size();
    return total_ - mine + mine * (shard_sizes_.size() - 1);
  }
  /// Seconds spent combining since construction (reduce or reduce_scatter, and with a sharded optimiser the
  /// gathers of the norm's parts and of the values), of them in the MPI calls (the transfers, and the wait for the
  /// slowest rank to finish its backward), and how many steps' gradients were combined.
  double seconds() const { return seconds_; }
  double mpi_seconds() const { return mpi_seconds_; }
  std::size_t calls() const { return calls_; }

  /// Every tensor's gradient <- the weighted sum over ranks (a copy of it on every rank).
  void reduce(const Space& space) {
    if (ranks_.size() == 1) return;
    const auto began = std::chrono::steady_clock::now();
    scatter_and_sum(space);
    gather(space, &Parameter<T, Space>::gradient);
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    ++calls_;
  }

  /// The gradient of this rank's shard <- the weighted sum over ranks; the rest of the gradients are left as they
  /// are (a sharded optimiser reads its shard alone).
  void reduce_scatter(const Space& space) {
    if (ranks_.size() == 1) return;
    const auto began = std::chrono::steady_clock::now();
    scatter_and_sum(space);
    copy(space, &Parameter<T, Space>::gradient, shard_, false);
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    ++calls_;
  }

  /// Every rank's values <- every rank's shard of them (after each has updated its own).
  void all_gather_values(const Space& space) {
    if (ranks_.size() == 1) return;
    const auto began = std::chrono::steady_clock::now();
    copy(space, &Parameter<T, Space>::value, shard_, true);
    gather(space, &Parameter<T, Space>::value);
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
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
    const auto began = std::chrono::steady_clock::now();
    Ranks::check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DOUBLE, parts.data(), counts.data(), offsets.data(), MPI_DOUBLE, MPI_COMM_WORLD),
                 "MPI_Allgatherv");
    const double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    mpi_seconds_ += spent;
    seconds_ += spent;
#else
    static_cast<void>(parts), static_cast<void>(counts), static_cast<void>(offsets);
#endif
  }

 private:
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "GradientReduction moves float or double gradients");
#if CAMEX_EXAMPLES_WITH_MPI
  static MPI_Datatype mpi_type() { return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE; }
#endif

  /// packed_'s shard of this rank <- the weighted sum of every rank's gradients there.
  void scatter_and_sum(const Space& space) {
    copy(space, &Parameter<T, Space>::gradient, FlatRange{0, total_}, true);
#if CAMEX_EXAMPLES_WITH_MPI
    const std::vector<int> piece_sizes(shard_sizes_.size(), static_cast<int>(shard_.size()));
    const auto exchange = std::chrono::steady_clock::now();
    Ranks::check(MPI_Alltoallv(packed_.data(), shard_sizes_.data(), shard_offsets_.data(), mpi_type(), pieces_.data(),
                               piece_sizes.data(), piece_offsets_.data(), mpi_type(), MPI_COMM_WORLD),
                 "MPI_Alltoallv");
    mpi_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - exchange).count();
#endif
    sum_pieces();
  }

  /// Every tensor's `field` <- packed_, once every rank's shard of it is there.
  void gather(const Space& space, typename Parameter<T, Space>::Flat Parameter<T, Space>::*field) {
#if CAMEX_EXAMPLES_WITH_MPI
    const auto gathering = std::chrono::steady_clock::now();
    Ranks::check(MPI_Allgatherv(MPI_IN_PLACE, 0, mpi_type(), packed_.data(), shard_sizes_.data(), shard_offsets_.data(),
                                mpi_type(), MPI_COMM_WORLD),
                 "MPI_Allgatherv");
    mpi_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - gathering).count();
#endif
    copy(space, field, FlatRange{0, total_}, false);
  }

  /// The entries `range` of every tensor's `field` into packed_ (`to_packed`) or back.
  void copy(const Space& space, typename Parameter<T, Space>::Flat Parameter<T, Space>::*field, FlatRange range, bool to_packed) {
    std::size_t at = 0;
    for (const auto& t : tensors_) {
      const auto& flat = t.flat.*field;
      const std::size_t n = flat.extent(0);
      const std::size_t lo = std::clamp(range.first, at, at + n), hi = std::clamp(range.last, at, at + n);
      if (lo < hi) {
        const auto in_packed = Kokkos::subview(packed_, std::make_pair(lo, hi));
        const auto in_tensor = Kokkos::subview(flat, std::make_pair(lo - at, hi - at));
        if (to_packed)
          Kokkos::deep_copy(space, in_packed, in_tensor);
        else
          Kokkos::deep_copy(space, in_tensor, in_packed);
      }
      at += n;
    }
    space.fence();
  }

  /// This rank's shard of `packed_` <- the weighted sum of every rank's piece of it, each entry in rank order.
  void sum_pieces() {
    const std::size_t mine = shard_.size(), first = shard_.first, ranks = shard_sizes_.size();
    const auto pieces = pieces_, packed = packed_;
    const double* weights = weights_.data();
    Kokkos::parallel_for("GradientReduction[sum]", Kokkos::RangePolicy<Kokkos::DefaultHostExecutionSpace>(0, mine),
                         [=](std::size_t k) {
                           double sum = 0;
                           for (std::size_t r = 0; r < ranks; ++r) sum += weights[r] * static_cast<double>(pieces(r * mine + k));
                           packed(first + k) = static_cast<T>(sum);
                         });
    Kokkos::DefaultHostExecutionSpace().fence();
  }

  const Ranks& ranks_;
  std::vector<NamedTensor<T, Space>> tensors_;
  std::vector<double> weights_;
  std::vector<int> shard_offsets_, shard_sizes_, piece_offsets_;
  FlatRange shard_;
  std::size_t total_ = 0;
  Kokkos::View<T*, Kokkos::HostSpace> packed_, pieces_;
  double seconds_ = 0, mpi_seconds_ = 0;
  std::size_t calls_ = 0;
};

}  // namespace camex::examples
