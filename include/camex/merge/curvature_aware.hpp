#pragma once
// Curvature-aware merging, CAMEx (docs/algorithms.md §4.5): merged_b = base + alpha sum_i s[b, i] M_i(E_i - base), with M_i the
// rank-r Kronecker-factored curvature of merge/axis/curvature.hpp. TIES-CA and DARE-CA are in ties.hpp and
// dare.hpp; dynamic merging (the propagated base) in dynamic.hpp.

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/axis/curvature.hpp"
#include "camex/merge/composed.hpp"

namespace camex {

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class CurvatureAware : public ComposedPolicy<Scalar, ExecSpace, NoMask, CurvatureTransform<Scalar, ExecSpace>> {
 public:
  explicit CurvatureAware(const MergeProblem& problem, const CurvatureOptions& curvature = {},
                          const MergeOptions& options = {})
      : ComposedPolicy<Scalar, ExecSpace, NoMask, CurvatureTransform<Scalar, ExecSpace>>(
            "camex::CurvatureAware", problem, options, {}, CurvatureTransform<Scalar, ExecSpace>(problem, curvature)) {}
};

}  // namespace camex
