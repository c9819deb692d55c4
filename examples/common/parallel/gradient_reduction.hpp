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

#include <Kokkos_Core.hpp>

#include <chrono>
#include <climits>
#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#include "common/parallel/ranks.hpp"
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
  /// Combines the gradients of `tensors` across `ranks`, rank r weighted by weights[r].
  GradientReduction(const Ranks& ranks, std::vector<NamedTensor<T, Space>> tensors, std::vector<double> weights)
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
    for (std::size_t r = 0; r < p; ++r) {
      shard_offsets_.push_back(static_cast<int>(r * total / p));
      shard_sizes_.push_back(static_cast<int>((r + 1) * total / p - r * total / p));
    }
    const auto mine = static_cast<std::size_t>(shard_sizes_[static_cast<std::size_t>(ranks.rank())]);
    for (std::size_t r = 0; r < p; ++r) piece_offsets_.push_back(static_cast<int>(r * mine));
    total_ = total;
    if (p == 1) return;  // a process alone reduces nothing and needs no buffers
    packed_ = Kokkos::View<T*, Kokkos::HostSpace>("gradient_reduction.packed", total);
    pieces_ = Kokkos::View<T*, Kokkos::HostSpace>("gradient_reduction.pieces", p * mine);
  }

  /// Gradient entries each rank sends per step (and receives): its shard's pieces to the others, then its summed
  /// shard to the others.
  std::size_t values_sent_per_step() const {
    const auto mine = static_cast<std::size_t>(shard_sizes_[static_cast<std::size_t>(ranks_.rank())]);
    return total_ - mine + mine * (shard_sizes_.size() - 1);
  }
  /// Seconds spent in reduce() since construction, of them in the MPI calls (the transfers, and the wait for the
  /// slowest rank to finish its backward), and how many calls.
  double seconds() const { return seconds_; }
  double mpi_seconds() const { return mpi_seconds_; }
  std::size_t calls() const { return calls_; }

  /// Every tensor's gradient <- the weighted sum over ranks (a copy of it on every rank).
  void reduce(const Space& space) {
    if (ranks_.size() == 1) return;
    const auto began = std::chrono::steady_clock::now();
    pack(space);
#if CAMEX_EXAMPLES_WITH_MPI
    const MPI_Datatype type = std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
    const std::vector<int> piece_sizes(shard_sizes_.size(), shard_sizes_[static_cast<std::size_t>(ranks_.rank())]);
    const auto exchange = std::chrono::steady_clock::now();
    Ranks::check(MPI_Alltoallv(packed_.data(), shard_sizes_.data(), shard_offsets_.data(), type, pieces_.data(),
                               piece_sizes.data(), piece_offsets_.data(), type, MPI_COMM_WORLD),
                 "MPI_Alltoallv");
    const auto summing = std::chrono::steady_clock::now();
    sum_pieces();
    const auto gathering = std::chrono::steady_clock::now();
    Ranks::check(MPI_Allgatherv(MPI_IN_PLACE, 0, type, packed_.data(), shard_sizes_.data(), shard_offsets_.data(), type,
                                MPI_COMM_WORLD),
                 "MPI_Allgatherv");
    mpi_seconds_ += std::chrono::duration<double>(summing - exchange).count() +
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - gathering).count();
#endif
    unpack(space);
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    ++calls_;
  }

 private:
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "GradientReduction moves float or double gradients");

  void pack(const Space& space) {
    std::size_t at = 0;
    for (const auto& t : tensors_) {
      const std::size_t n = t.flat.gradient.extent(0);
      Kokkos::deep_copy(space, Kokkos::subview(packed_, std::make_pair(at, at + n)), t.flat.gradient);
      at += n;
    }
    space.fence();
  }

  void unpack(const Space& space) {
    std::size_t at = 0;
    for (const auto& t : tensors_) {
      const std::size_t n = t.flat.gradient.extent(0);
      Kokkos::deep_copy(space, t.flat.gradient, Kokkos::subview(packed_, std::make_pair(at, at + n)));
      at += n;
    }
    space.fence();
  }

  /// This rank's shard of `packed_` <- the weighted sum of every rank's piece of it, each entry in rank order.
  void sum_pieces() {
    const std::size_t rank = static_cast<std::size_t>(ranks_.rank()), mine = static_cast<std::size_t>(shard_sizes_[rank]);
    const std::size_t first = static_cast<std::size_t>(shard_offsets_[rank]), ranks = shard_sizes_.size();
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
  std::size_t total_ = 0;
  Kokkos::View<T*, Kokkos::HostSpace> packed_, pieces_;
  double seconds_ = 0, mpi_seconds_ = 0;
  std::size_t calls_ = 0;
};

}  // namespace camex::examples
