#pragma once
// The bundles a layer takes for each merged tensor: its experts [n, P] and base [1, P] (empty when the policy has
// none), read-only as the operands of a step, writable as their gradients or as the model's storage of them.

#include "camex/core/views.hpp"

namespace camex {

/// The operands of one merged tensor, read by forward and backward.
template <class Scalar, class ExecSpace>
struct ExpertTensors {
  ConstMatrix<Scalar, ExecSpace> experts;
  ConstMatrix<Scalar, ExecSpace> base;
};

/// The writable counterpart, same shapes.
template <class Scalar, class ExecSpace>
struct ExpertMatrices {
  Matrix<Scalar, ExecSpace> experts;
  Matrix<Scalar, ExecSpace> base;
};

/// What backward writes: the gradients of the experts and the base.
template <class Scalar, class ExecSpace>
using ExpertGradients = ExpertMatrices<Scalar, ExecSpace>;

/// The model's own storage of the experts and the base: what a layer's tensors() names and loading writes
/// (nn/named_tensors.hpp).
template <class Scalar, class ExecSpace>
using ExpertStorage = ExpertMatrices<Scalar, ExecSpace>;

}  // namespace camex
