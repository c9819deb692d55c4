#pragma once
// The host's reads of one step, taken together (docs/layers.md, "What a step moves"). A component that must learn a
// value from the execution space's memory - a policy's status, a router's balancing loss - queues it on the step's
// batch (StepContext::read_backs) with what to do with it, instead of reading it at once. Whoever set the batch reads
// it when the step's work is queued (a layer at the end of its forward, a trainer once a step): every queued value
// comes back in one copy, then each value's settle function runs on the host in the order they were queued, and the
// first that throws ends the read. Where the host can read the space's memory the values are read in place.
//
// Values are at most max_value_bytes each; a queued cell must keep its value until the batch is read.

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "camex/core/error.hpp"

namespace camex {

class StepReadBacks {
 public:
  /// What is done with a value once it is on the host: `owner` is the pointer queued with it, `value` its bytes,
  /// or null where the value is discarded (the step was abandoned; the function must not throw then).
  using Settle = void (*)(void* owner, const unsigned char* value);
  static constexpr std::size_t max_value_bytes = 32;

  /// Queues the `bytes` bytes at `cell` (the execution space's memory, written by work queued on the space before
  /// the read) for settle(owner, value) at the next read.
  void defer(const void* cell, std::size_t bytes, Settle settle, void* owner) {
    constexpr const char* fn = "camex::StepReadBacks::defer";
    if (cell == nullptr) throw argument_error(fn, "cell", "a cell of the execution space's memory", "a null pointer");
    if (bytes == 0 || bytes > max_value_bytes)
      throw argument_error(fn, "bytes", concat("1 to ", max_value_bytes, " bytes"), concat(bytes));
    if (settle == nullptr) throw argument_error(fn, "settle", "a settle function", "a null pointer");
    entries_.push_back({static_cast<const unsigned char*>(cell), bytes, queued_bytes_, settle, owner});
    queued_bytes_ += (bytes + alignment - 1) / alignment * alignment;
  }

  /// Queues a balancing loss: read with the rest and added into loss().
  void defer_loss(const double* cell) { defer(cell, sizeof(double), &add_loss, this); }

  /// The sum of the losses the last read settled.
  double loss() const { return loss_; }
  /// How many values wait for the next read.
  std::size_t pending() const { return entries_.size(); }

  /// Forgets every queued value, telling each owner (settle with a null value): for a step abandoned by an
  /// exception, whose queued values no read will settle.
  void discard() noexcept {
    for (const Entry& e : entries_) e.settle(e.owner, nullptr);
    entries_.clear();
    queued_bytes_ = 0;
  }

 protected:
  static constexpr std::size_t alignment = 8;

  struct Entry {
    const unsigned char* cell;
    std::size_t bytes;
    std::size_t offset;  ///< where the value lies in the gathered copy
    Settle settle;
    void* owner;
  };

  // Moved only while nothing is queued (a queued loss names its batch); a layer that holds one is moved at most
  // while it is built.
  StepReadBacks() { entries_.reserve(16); }
  StepReadBacks(const StepReadBacks&) = delete;
  StepReadBacks(StepReadBacks&&) = default;
  StepReadBacks& operator=(const StepReadBacks&) = delete;
  StepReadBacks& operator=(StepReadBacks&&) = default;
  ~StepReadBacks() = default;

  /// Runs the settle functions on the gathered values, in queue order; the queue is empty afterwards, and where a
  /// settle function throws, the values after it are discarded.
  void settle_all(const unsigned char* gathered) {
    struct DiscardRestOnExit {
      StepReadBacks& batch;
      std::size_t next = 0;
      ~DiscardRestOnExit() {
        for (; next < batch.entries_.size(); ++next) batch.entries_[next].settle(batch.entries_[next].owner, nullptr);
        batch.entries_.clear();
        batch.queued_bytes_ = 0;
      }
    } rest{*this};
    loss_ = 0;
    while (rest.next < entries_.size()) {
      const Entry& e = entries_[rest.next++];
      e.settle(e.owner, gathered + e.offset);
    }
  }

  std::vector<Entry> entries_;
  std::size_t queued_bytes_ = 0;

 private:
  static void add_loss(void* owner, const unsigned char* value) {
    if (value == nullptr) return;
    double loss;
    std::memcpy(&loss, value, sizeof loss);
    static_cast<StepReadBacks*>(owner)->loss_ += loss;
  }

  double loss_ = 0;
};

namespace detail {

/// Up to `count` queued cells, copied into a gathered buffer by one kernel: their addresses, lengths and places.
struct ReadBackGather {
  static constexpr std::size_t width = 16;
  Kokkos::Array<const unsigned char*, width> cell;
  Kokkos::Array<std::size_t, width> bytes, offset;
  std::size_t count = 0;
};

template <class ExecSpace>
void gather_read_backs(const ExecSpace& space, const ReadBackGather& piece, unsigned char* gathered) {
  Kokkos::parallel_for("camex::StepReadBacks[gather]", Kokkos::RangePolicy<ExecSpace>(space, 0, piece.count),
                       KOKKOS_LAMBDA(std::size_t i) {
                         for (std::size_t b = 0; b < piece.bytes[i]; ++b) gathered[piece.offset[i] + b] = piece.cell[i][b];
                       });
}

}  // namespace detail

/// The batch of one execution space: on a device, the queued values are gathered by kernels into a buffer of the
/// space's memory and copied to the host in one deep copy. The buffers grow when a step queues more than any
/// before it, so a steady state allocates nothing.
template <class ExecSpace>
class ReadBackBatch : public StepReadBacks {
 public:
  ReadBackBatch() = default;

  /// Reads every queued value and settles it (see above); loss() is then the queued losses' sum.
  void read(const ExecSpace& space) {
    if (entries_.empty()) {
      settle_all(nullptr);
      return;
    }
    if (host_.size() < queued_bytes_) host_.resize(queued_bytes_);
    space.fence();
    if constexpr (host_reads_in_place) {
      for (const Entry& e : entries_) std::memcpy(host_.data() + e.offset, e.cell, e.bytes);
    } else {
      if (gathered_.extent(0) < queued_bytes_) gathered_ = Gathered("camex::ReadBackBatch", queued_bytes_);
      detail::ReadBackGather piece;
      for (std::size_t i = 0; i < entries_.size(); ++i) {
        piece.cell[piece.count] = entries_[i].cell;
        piece.bytes[piece.count] = entries_[i].bytes;
        piece.offset[piece.count] = entries_[i].offset;
        if (++piece.count == detail::ReadBackGather::width || i + 1 == entries_.size()) {
          detail::gather_read_backs(space, piece, gathered_.data());
          piece.count = 0;
        }
      }
      Kokkos::deep_copy(space, Kokkos::View<unsigned char*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(host_.data(), queued_bytes_),
                        Kokkos::subview(gathered_, std::pair<std::size_t, std::size_t>(0, queued_bytes_)));
      space.fence();
    }
    settle_all(host_.data());
  }

 private:
  static constexpr bool host_reads_in_place =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename ExecSpace::memory_space>::accessible;
  using Gathered = Kokkos::View<unsigned char*, typename ExecSpace::memory_space>;

  Gathered gathered_;
  std::vector<unsigned char> host_;
};

}  // namespace camex
