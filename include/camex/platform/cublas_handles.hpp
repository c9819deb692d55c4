#pragma once
// One cuBLAS handle per (device, stream), created on first use and destroyed when Kokkos finalises.
//
// Why one per stream: a handle holds one workspace, and cuBLAS only promises run-to-run identical results while a
// workspace is not shared between streams that may overlap; a handle rebound with cublasSetStream on every call
// would also serialise the host threads that drive different streams. Handles are never rebound here.
// Atomics are disallowed on every handle so that no routine may pick an atomics-based (order-dependent) path.
// Only compiled where Kokkos has its Cuda backend.

#include <Kokkos_Core.hpp>

#if defined(KOKKOS_ENABLE_CUDA)
#include <cublas_v2.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace camex::platform {

/// Throws std::runtime_error naming `call` and cuBLAS's reading of `status` unless it is CUBLAS_STATUS_SUCCESS.
inline void check_cublas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(call) + " failed: " + cublasGetStatusName(status) + " (" +
                             cublasGetStatusString(status) + ")");
}

namespace detail {

class CublasHandles {
 public:
  static CublasHandles& instance() {
    static CublasHandles handles;
    return handles;
  }

  cublasHandle_t get(int device, cudaStream_t stream) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto key = std::make_pair(device, stream);
    if (const auto found = handles_.find(key); found != handles_.end()) return found->second;
    int current = 0;
    if (cudaGetDevice(&current) != cudaSuccess || current != device)
      throw std::runtime_error("camex: a cuBLAS handle for device " + std::to_string(device) +
                               " was asked for while device " + std::to_string(current) + " is current");
    cublasHandle_t handle = nullptr;
    check_cublas(cublasCreate(&handle), "cublasCreate");
    try {
      check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
      check_cublas(cublasSetAtomicsMode(handle, CUBLAS_ATOMICS_NOT_ALLOWED), "cublasSetAtomicsMode");
    } catch (...) {
      cublasDestroy(handle);
      throw;
    }
    if (!finalize_hook_pushed_) {
      Kokkos::push_finalize_hook([] { CublasHandles::instance().destroy_all(); });
      finalize_hook_pushed_ = true;
    }
    handles_.emplace(key, handle);
    return handle;
  }

 private:
  // Runs at the start of Kokkos::finalize, while the device is still up; a later Kokkos::initialize starts over.
  void destroy_all() {
    const std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& entry : handles_) cublasDestroy(entry.second);
    handles_.clear();
    finalize_hook_pushed_ = false;
  }

  std::mutex mutex_;
  std::map<std::pair<int, cudaStream_t>, cublasHandle_t> handles_;
  bool finalize_hook_pushed_ = false;
};

}  // namespace detail

/// The cuBLAS handle bound to `space`'s device and stream.
inline cublasHandle_t cublas_handle(const Kokkos::Cuda& space) {
  return detail::CublasHandles::instance().get(space.cuda_device(), space.cuda_stream());
}

}  // namespace camex::platform
#endif
