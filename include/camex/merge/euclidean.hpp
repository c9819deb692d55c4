#pragma once
// Euclidean merging, SMEAR (docs/algorithms.md §4.1): merged_b = sum_i s[b, i] E_i over every expert, no base. With an expert
// module of several tensors, run one Euclidean per tensor with the same scores and add their score gradients.

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/composed.hpp"

namespace camex {

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class Euclidean : public ComposedPolicy<Scalar, ExecSpace, NoMask, IdentityTransform> {
 public:
  explicit Euclidean(const MergeProblem& problem)
      : ComposedPolicy<Scalar, ExecSpace, NoMask, IdentityTransform>("camex::Euclidean", problem,
                                                                      {.base = BaseSource::none}, {}, {}) {}
};

}  // namespace camex
