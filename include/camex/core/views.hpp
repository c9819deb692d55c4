#pragma once
// The views camex kernels take, and the checks every entry point runs on them.
//
// Everything is a row-major rank-2 Kokkos::View whose rows are contiguous: one row per expert tensor (flattened to
// P parameters), per routing group, or per merged output. LayoutRight is required on every backend (Kokkos' CUDA
// default is LayoutLeft) because the kernels stream along rows.

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>
#include <string>
#include <type_traits>

#include "camex/core/error.hpp"

namespace camex {

/// A row-major matrix in the memory of `ExecSpace`.
template <class Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
using Matrix = Kokkos::View<Scalar**, Kokkos::LayoutRight, typename ExecSpace::memory_space>;

/// A read-only row-major matrix in the memory of `ExecSpace` (the operands kernels read).
template <class Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
using ConstMatrix = Kokkos::View<const Scalar**, Kokkos::LayoutRight, typename ExecSpace::memory_space>;

/// A vector in the memory of `ExecSpace` (a router's gains and biases). camex has one vocabulary of views: a
/// shape such as experts [n, P], scores [B, n] or merged [B, P] is a Matrix or ConstMatrix, named by its argument.
template <class Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
using Vector = Kokkos::View<Scalar*, typename ExecSpace::memory_space>;

/// Any rank-2 LayoutRight view (managed or not, const or not).
template <class V>
concept RowMajorMatrix = Kokkos::is_view<V>::value && (V::rank == 2) &&
                         std::same_as<typename V::array_layout, Kokkos::LayoutRight>;

/// A RowMajorMatrix whose memory `ExecSpace` can read.
template <class V, class ExecSpace>
concept MatrixOn = RowMajorMatrix<V> &&
                   static_cast<bool>(Kokkos::SpaceAccessibility<ExecSpace, typename V::memory_space>::accessible);

/// A RowMajorMatrix that can be written to.
template <class V>
concept MutableMatrix = RowMajorMatrix<V> && !std::is_const_v<typename V::value_type>;

// The operand checks of camex's entry points, public so a user's policy or router checks its operands the same
// way and throws the same argument_error.

/// Elements between the starts of consecutive rows (signed, for pointer arithmetic in kernels).
template <RowMajorMatrix V>
std::ptrdiff_t row_stride(const V& v) {
  return static_cast<std::ptrdiff_t>(v.stride(0));
}

template <RowMajorMatrix V>
std::string shape_of(const V& v) {
  return concat('[', v.extent(0), ", ", v.extent(1), ']');
}

/// Throws unless `v` is `[rows, cols]`; `expected` spells out where each extent comes from.
template <RowMajorMatrix V>
void require_shape(const char* function, const char* name, const V& v, std::size_t rows, std::size_t cols,
                   const std::string& expected) {
  if (v.extent(0) != rows || v.extent(1) != cols)
    throw argument_error(function, name, concat("shape ", expected, " = [", rows, ", ", cols, ']'), shape_of(v));
}

/// Throws if `v` has no elements: camex reads every operand, and an empty one is a caller's bug.
template <RowMajorMatrix V>
void require_nonempty(const char* function, const char* name, const V& v, const char* meaning) {
  if (v.extent(0) == 0 || v.extent(1) == 0)
    throw argument_error(function, name, concat("a non-empty ", meaning), concat("shape ", shape_of(v)));
}

/// Throws if the memory of `out` overlaps `in`'s: kernels read inputs while they write outputs.
template <RowMajorMatrix Out, RowMajorMatrix In>
void require_disjoint(const char* function, const char* out_name, const Out& out, const char* in_name,
                      const In& in) {
  const auto* out_begin = reinterpret_cast<const char*>(out.data());
  const auto* out_end = out_begin + out.span() * sizeof(typename Out::value_type);
  const auto* in_begin = reinterpret_cast<const char*>(in.data());
  const auto* in_end = in_begin + in.span() * sizeof(typename In::value_type);
  if (out_begin < in_end && in_begin < out_end)
    throw argument_error(function, out_name, concat("memory disjoint from '", in_name, '\''),
                         concat("a view overlapping '", in_name, '\''));
}

}  // namespace camex
