#pragma once
// One NCCL communicator over the GPUs of a data-parallel run, one per rank (each rank's current CUDA device, the one
// Kokkos runs on; ranks that share one are refused first, common/parallel/device_sharing.hpp), bootstrapped through
// MPI as NCCL asks: rank 0 draws the unique id, MPI broadcasts it, every rank joins with it. Or a communicator of
// one GPU alone, which runs every collective of the reduction on one device (the GPU check's test of the NCCL path,
// tests/examples/common/parallel/nccl_reduction.cpp).

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string>

#include "common/parallel/device_sharing.hpp"
#include "common/parallel/ranks.hpp"

namespace camex::examples {

/// A NCCL or CUDA runtime call that failed, with the library's own description.
class nccl_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline void nccl_check(ncclResult_t result, const char* call) {
  if (result != ncclSuccess) throw nccl_error(std::string(call) + " failed: " + ncclGetErrorString(result));
}
inline void cuda_check(cudaError_t result, const char* call) {
  if (result != cudaSuccess) throw nccl_error(std::string(call) + " failed: " + cudaGetErrorString(result));
}

class NcclCommunicator {
 public:
  /// Every rank of `ranks`, each on its current CUDA device.
  explicit NcclCommunicator(const Ranks& ranks) : size_(ranks.size()), rank_(ranks.rank()) {
    int device = 0;
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    cudaDeviceProp properties{};
    cuda_check(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
    const auto uuids = ranks.all_gather_bytes(std::as_bytes(std::span(properties.uuid.bytes)));
    if (const auto shared = ranks_sharing_a_device(uuids, sizeof properties.uuid.bytes))
      throw nccl_error(shared_device_message(shared->first, shared->second));
    ncclUniqueId id{};
    if (ranks.leader()) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    ranks.broadcast_from_leader(std::as_writable_bytes(std::span(&id, 1)));
    nccl_check(ncclCommInitRank(&comm_, size_, id, rank_), "ncclCommInitRank");
  }
  /// One rank alone, on the current CUDA device.
  static NcclCommunicator alone() { return NcclCommunicator(); }

  ~NcclCommunicator() {
    if (comm_ != nullptr) ncclCommDestroy(comm_);
  }
  NcclCommunicator(NcclCommunicator&& other) noexcept : comm_(other.comm_), size_(other.size_), rank_(other.rank_) {
    other.comm_ = nullptr;
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(NcclCommunicator&&) = delete;

  ncclComm_t get() const { return comm_; }
  int size() const { return size_; }
  int rank() const { return rank_; }

 private:
  NcclCommunicator() {
    int device = 0;
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    nccl_check(ncclCommInitAll(&comm_, 1, &device), "ncclCommInitAll");
  }

  ncclComm_t comm_ = nullptr;
  int size_ = 1, rank_ = 0;
};

}  // namespace camex::examples
