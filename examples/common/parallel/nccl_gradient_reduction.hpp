#pragma once
// The gradient reduction of a data-parallel run on Kokkos' Cuda backend, device to device through NCCL: the same
// buckets, shards and rank-ordered sum as the MPI transport (gradient_reduction.hpp; the buckets, checks and sum in
// reduction_buckets.hpp), so the two give the same bits. A bucket, once the backward says its last group is final,
// is queued whole on a communication stream of its own, after an event on the execution space's stream: packed in
// flat order into a device buffer, exchanged (each rank's run to that rank, grouped ncclSend/ncclRecv: an
// all-to-all), summed in rank order by a kernel, then gathered (every rank's summed run to every rank, grouped
// ncclSend/ncclRecv: an all-gather of runs of unequal length, which ncclAllGather does not take) and unpacked. The
// backward of the earlier blocks goes on on the execution space's stream meanwhile; complete() makes that stream
// wait for the communication stream, so the optimiser reads the sums, and the host waits for nothing. With the
// optimiser sharded (ReducedGradients::own_shard) the gather is left out, and all_gather_values() gathers the
// updated values the same way.
//
// No host synchronisation, no transfer through the host, nothing allocated after construction. The timers count
// the host's queueing, not the transfers.

#include <Kokkos_Core.hpp>

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/parallel/nccl_communicator.hpp"
#include "common/parallel/ranks.hpp"
#include "common/parallel/reduction_buckets.hpp"

namespace camex::examples {

template <class T>
class NcclGradientReduction : public ReductionBuckets<T, Kokkos::Cuda> {
  using Space = Kokkos::Cuda;
  using Base = ReductionBuckets<T, Space>;
  using Bucket = typename Base::Bucket;
  using Device = Kokkos::View<T*, typename Space::memory_space>;
  using Base::buckets_;
  using Base::ranks_;
  using Base::result_;
  using Base::shard_;
  using Base::total_;

 public:
  /// As GradientReduction, the bytes moving between the GPUs of `communicator` (one rank each, the ranks of
  /// `ranks`): made from `ranks` where none is given and there are several; a process alone without one reduces
  /// nothing.
  NcclGradientReduction(const Ranks& ranks, std::vector<NamedTensor<T, Space>> tensors, std::vector<double> weights,
                        const std::vector<std::size_t>& bounds, ReductionPlan plan = {},
                        std::shared_ptr<const NcclCommunicator> communicator = nullptr)
      : Base("NcclGradientReduction", ranks, std::move(tensors), weights, bounds, std::move(plan)),
        communicator_(std::move(communicator)) {
    if (communicator_ == nullptr && ranks.size() > 1) communicator_ = std::make_shared<const NcclCommunicator>(ranks);
    if (communicator_ == nullptr) return;
    if (communicator_->size() != ranks.size() || communicator_->rank() != ranks.rank())
      throw argument_error("NcclGradientReduction", "communicator", concat("rank ", ranks.rank(), " of ", ranks.size()),
                           concat("rank ", communicator_->rank(), " of ", communicator_->size()));
    const auto p = static_cast<std::size_t>(ranks.size());
    packed_ = Device("nccl_gradient_reduction.packed", total_);
    pieces_ = Device("nccl_gradient_reduction.pieces", p * shard_.size());
    device_weights_ = Kokkos::View<double*, typename Space::memory_space>("nccl_gradient_reduction.weights", p);
    Kokkos::deep_copy(device_weights_, Kokkos::View<const double*, Kokkos::HostSpace>(weights.data(), weights.size()));
    stream_ = std::make_unique<Stream>();
    communication_ = std::make_unique<Space>(stream_->stream);
  }
  NcclGradientReduction(const NcclGradientReduction&) = delete;
  NcclGradientReduction& operator=(const NcclGradientReduction&) = delete;

  /// Group `group` of the plan is final (groups come in order, each once a step): where it ends a bucket, the
  /// bucket's reduction is queued after the work `space` has queued so far.
  void gradients_ready(const Space& space, std::size_t group) {
    const std::size_t b = this->accept(group);
    if (communicator_ == nullptr) return;
    const ScopeTimer timer(this->seconds_);
    if (b != Base::no_bucket) reduce_bucket(space, b);
  }

  /// Ends the step's reduction (groups not yet ready are taken as ready now): the work `space` queues from here on
  /// sees every tensor's gradient as the weighted sum over ranks, or (own_shard) this rank's shard's entries so.
  void complete(const Space& space) {
    const std::vector<std::size_t> remaining = this->remaining_buckets();
    if (communicator_ == nullptr) return;
    const ScopeTimer timer(this->seconds_), after(this->after_backward_seconds_);
    for (const std::size_t b : remaining) reduce_bucket(space, b);
    rejoin(space);
    ++this->calls_;
  }

  /// Every rank's values <- every rank's shard of them (after each has updated its own), queued on `space`.
  void all_gather_values(const Space& space) {
    if (communicator_ == nullptr) return;
    const ScopeTimer timer(this->seconds_), after(this->after_backward_seconds_);
    follow(space);
    for (const Bucket& b : buckets_) {
      const auto [first, last] = this->own_run(b);
      this->copy(*communication_, &Parameter<T, Space>::value, packed_, b, first, last, true);
    }
    for (const Bucket& b : buckets_) {  // a group a bucket: NCCL bounds the operations of one group
      Group group;
      gather_runs(b);
      group.end();
    }
    for (const Bucket& b : buckets_) this->copy(*communication_, &Parameter<T, Space>::value, packed_, b, 0, b.size, false);
    rejoin(space);
  }

 private:
  static ncclDataType_t nccl_type() { return std::is_same_v<T, float> ? ncclFloat : ncclDouble; }

  /// The communication stream and the two events that order it against the execution space's stream.
  struct Stream {
    cudaStream_t stream = nullptr;
    cudaEvent_t compute_done = nullptr, communication_done = nullptr;
    Stream() {
      try {
        cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
        cuda_check(cudaEventCreateWithFlags(&compute_done, cudaEventDisableTiming), "cudaEventCreateWithFlags");
        cuda_check(cudaEventCreateWithFlags(&communication_done, cudaEventDisableTiming), "cudaEventCreateWithFlags");
      } catch (...) {
        release();
        throw;
      }
    }
    ~Stream() { release(); }
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    void release() {
      if (compute_done != nullptr) cudaEventDestroy(compute_done);
      if (communication_done != nullptr) cudaEventDestroy(communication_done);
      if (stream != nullptr) cudaStreamDestroy(stream);
      compute_done = communication_done = nullptr;
      stream = nullptr;
    }
  };

  /// A NCCL group, ended by end() or, when an error leaves its scope first, by the destructor.
  class Group {
   public:
    Group() { nccl_check(ncclGroupStart(), "ncclGroupStart"); }
    ~Group() {
      if (open_) ncclGroupEnd();
    }
    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;
    void end() {
      open_ = false;
      nccl_check(ncclGroupEnd(), "ncclGroupEnd");
    }

   private:
    bool open_ = true;
  };

  /// The communication stream waits for what `space` has queued.
  void follow(const Space& space) {
    cuda_check(cudaEventRecord(stream_->compute_done, space.cuda_stream()), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_->stream, stream_->compute_done, 0), "cudaStreamWaitEvent");
  }
  /// `space` waits for what the communication stream has queued.
  void rejoin(const Space& space) {
    cuda_check(cudaEventRecord(stream_->communication_done, stream_->stream), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(space.cuda_stream(), stream_->communication_done, 0), "cudaStreamWaitEvent");
  }

  /// Queues bucket b's reduction: pack, exchange, ordered sum, then the gather and unpacking of every run, or of
  /// this rank's alone.
  void reduce_bucket(const Space& space, std::size_t b) {
    const Bucket& bucket = buckets_[b];
    follow(space);
    this->copy(*communication_, &Parameter<T, Space>::gradient, packed_, bucket, 0, bucket.size, true);
    const auto [first, last] = this->own_run(bucket);
    const std::size_t mine = last - first, ranks = static_cast<std::size_t>(ranks_.size());
    const ncclComm_t comm = communicator_->get();
    // A pair whose count is 0 is left out on both sides alike: both know every rank's run length.
    Group exchange;
    for (std::size_t r = 0; r < ranks; ++r) {
      const auto count = static_cast<std::size_t>(bucket.counts[r]);
      if (count > 0)
        nccl_check(ncclSend(packed_.data() + bucket.offset + bucket.displacements[r], count, nccl_type(), static_cast<int>(r), comm,
                            stream_->stream),
                   "ncclSend");
      if (mine > 0)
        nccl_check(ncclRecv(pieces_.data() + bucket.pieces + r * mine, mine, nccl_type(), static_cast<int>(r), comm,
                            stream_->stream),
                   "ncclRecv");
    }
    exchange.end();
    sum_in_rank_order(*communication_, Kokkos::subview(pieces_, std::make_pair(bucket.pieces, bucket.pieces + ranks * mine)),
                      device_weights_, Kokkos::subview(packed_, std::make_pair(bucket.offset + first, bucket.offset + last)));
    if (result_ == ReducedGradients::own_shard) {
      this->copy(*communication_, &Parameter<T, Space>::gradient, packed_, bucket, first, last, false);
      return;
    }
    Group gather;
    gather_runs(bucket);
    gather.end();
    this->copy(*communication_, &Parameter<T, Space>::gradient, packed_, bucket, 0, bucket.size, false);
  }

  /// Within a NCCL group: this rank's run of `bucket` in packed_ to every other rank, every other rank's run from it.
  void gather_runs(const Bucket& bucket) const {
    const std::size_t me = static_cast<std::size_t>(ranks_.rank()), ranks = static_cast<std::size_t>(ranks_.size());
    const ncclComm_t comm = communicator_->get();
    const auto mine = static_cast<std::size_t>(bucket.counts[me]);
    for (std::size_t r = 0; r < ranks; ++r) {
      if (r == me) continue;
      const auto theirs = static_cast<std::size_t>(bucket.counts[r]);
      if (mine > 0)
        nccl_check(ncclSend(packed_.data() + bucket.offset + bucket.displacements[me], mine, nccl_type(), static_cast<int>(r), comm,
                            stream_->stream),
                   "ncclSend");
      if (theirs > 0)
        nccl_check(ncclRecv(packed_.data() + bucket.offset + bucket.displacements[r], theirs, nccl_type(), static_cast<int>(r), comm,
                            stream_->stream),
                   "ncclRecv");
    }
  }

  std::shared_ptr<const NcclCommunicator> communicator_;
  Device packed_, pieces_;
  Kokkos::View<double*, typename Space::memory_space> device_weights_;
  std::unique_ptr<Stream> stream_;
  std::unique_ptr<Space> communication_;  // a Kokkos instance on stream_, so destroyed before it
};

}  // namespace camex::examples
