#pragma once
// Scratch memory handed to kernels by the caller (the two-phase pattern of CUB: ask how many bytes, allocate once,
// pass the same buffer every step), so no allocation happens inside a training loop.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

#include "camex/core/error.hpp"

namespace camex {

/// Scratch bytes in the memory of `ExecSpace`.
template <class ExecSpace = Kokkos::DefaultExecutionSpace>
using Workspace = Kokkos::View<unsigned char*, typename ExecSpace::memory_space>;

/// Allocates a workspace of `bytes` bytes (label shows up in Kokkos' tools).
template <class ExecSpace = Kokkos::DefaultExecutionSpace>
Workspace<ExecSpace> make_workspace(std::size_t bytes, const char* label = "camex::workspace") {
  return Workspace<ExecSpace>(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), bytes);
}

/// Hands out consecutive 64-byte-aligned arrays from a workspace. The same sequence of take() calls on a carver
/// built without a workspace only counts bytes, so a kernel's size query and its carving cannot drift apart:
///   std::size_t bytes() { WorkspaceCarver<S> c; layout(c); return c.bytes(); }
template <class ExecSpace>
class WorkspaceCarver {
 public:
  using execution_space = ExecSpace;
  template <class T>
  using Array = Kokkos::View<T*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  template <class T>
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, typename ExecSpace::memory_space,
                              Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  /// Counting mode: take() returns empty arrays and bytes() reports what a real workspace needs.
  WorkspaceCarver() = default;

  /// Carving mode: throws argument_error unless `workspace` is large enough for everything taken.
  WorkspaceCarver(const char* function, const Workspace<ExecSpace>& workspace)
      : function_(function), workspace_(workspace), carving_(true) {
    if (reinterpret_cast<std::uintptr_t>(workspace.data()) % alignment != 0)
      throw argument_error(function, "workspace", concat("an address aligned to ", alignment, " bytes"),
                           concat("an address ", reinterpret_cast<std::uintptr_t>(workspace.data()) % alignment,
                                  " bytes past such a boundary"));
  }

  template <class T>
  Array<T> take(std::size_t count) {
    const std::size_t begin = (used_ + alignment - 1) / alignment * alignment;
    used_ = begin + count * sizeof(T);
    if (!carving_) return {};
    if (workspace_.extent(0) < used_)
      throw argument_error(function_, "workspace", concat("at least ", used_, " bytes (ask the *_workspace_bytes query)"),
                           concat(workspace_.extent(0), " bytes"));
    return Array<T>(reinterpret_cast<T*>(workspace_.data() + begin), count);
  }

  /// A row-major [rows, cols] matrix (empty, with those extents, in counting mode).
  template <class T>
  Matrix<T> take_matrix(std::size_t rows, std::size_t cols) {
    const auto array = take<T>(rows * cols);
    return carving_ ? Matrix<T>(array.data(), rows, cols) : Matrix<T>(nullptr, rows, cols);
  }

  std::size_t bytes() const { return used_; }

  /// Every array starts on a cache line (and on any scalar's alignment).
  static constexpr std::size_t alignment = 64;

 private:
  const char* function_ = "";
  Workspace<ExecSpace> workspace_;
  bool carving_ = false;
  std::size_t used_ = 0;
};

/// The arrays and row-major matrices a carver hands out, for the structs that keep a step's state in a workspace.
template <class T, class ExecSpace>
using WorkspaceArray = typename WorkspaceCarver<ExecSpace>::template Array<T>;
template <class T, class ExecSpace>
using WorkspaceMatrix = typename WorkspaceCarver<ExecSpace>::template Matrix<T>;

}  // namespace camex
