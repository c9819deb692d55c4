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

namespace detail {

/// Views `count` elements of T at the start of `workspace`, after checking size and alignment.
template <class T, class ExecSpace>
Kokkos::View<T*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>> carve(
    const char* function, const Workspace<ExecSpace>& workspace, std::size_t count) {
  const std::size_t bytes = count * sizeof(T);
  if (workspace.extent(0) < bytes)
    throw argument_error(function, "workspace", concat("at least ", bytes, " bytes (ask the *_workspace_bytes query)"),
                         concat(workspace.extent(0), " bytes"));
  if (reinterpret_cast<std::uintptr_t>(workspace.data()) % alignof(T) != 0)
    throw argument_error(function, "workspace", concat("an address aligned to ", alignof(T), " bytes"),
                         concat("an address ", reinterpret_cast<std::uintptr_t>(workspace.data()) % alignof(T),
                                " bytes past such a boundary"));
  using Carved = Kokkos::View<T*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  return Carved(reinterpret_cast<T*>(workspace.data()), count);
}

}  // namespace detail
}  // namespace camex
