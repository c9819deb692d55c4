#pragma once
// The arrays the example models pass between layers: row-major matrices (one row per token) and flat vectors in
// the memory of the execution space, and the token ids they start from.

#include <camex/core/error.hpp>
#include <camex/core/views.hpp>
#include <camex/platform/kokkos_compat.hpp>

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace camex::examples {

/// What the trainers train in.
using TrainScalar = float;
using TrainSpace = Kokkos::DefaultExecutionSpace;

template <class T, class Space>
using Mat = Kokkos::View<T**, Kokkos::LayoutRight, typename Space::memory_space>;
template <class T, class Space>
using ConstMat = Kokkos::View<const T**, Kokkos::LayoutRight, typename Space::memory_space>;
template <class T, class Space>
using Vec = Kokkos::View<T*, typename Space::memory_space>;
template <class T, class Space>
using ConstVec = Kokkos::View<const T*, typename Space::memory_space>;
/// Read-only operands of the layer functions, in a non-deduced context: T and Space come from the outputs, and a
/// mutable view converts.
template <class T, class Space>
using InMat = std::type_identity_t<ConstMat<T, Space>>;
template <class T, class Space>
using InVec = std::type_identity_t<ConstVec<T, Space>>;
template <class Space>
using TokenIds = Kokkos::View<const std::int32_t*, typename Space::memory_space>;

/// Throws unless `v` holds `size` entries.
template <class V>
void require_length(const char* function, const char* name, const V& v, std::size_t size, const char* meaning) {
  if (v.extent(0) != size)
    throw argument_error(function, name, concat(size, " entries (", meaning, ")"),
                         concat(v.extent(0), " entries"));
}

}  // namespace camex::examples
