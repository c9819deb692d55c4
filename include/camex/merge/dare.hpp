#pragma once
// DARE merging (spec §4.4): merged_b = base + alpha sum_i kappa[b, i] s[b, i] f_i .* (E_i - base), with the
// random drop-and-rescale of merge/axis/dare.hpp (element-level by default, the CAMEx code's Drop2d as an option).

#include <Kokkos_Core.hpp>

#include <concepts>

#include "camex/merge/axis/dare.hpp"
#include "camex/merge/composed.hpp"

namespace camex {

template <std::floating_point Scalar, class ExecSpace = Kokkos::DefaultExecutionSpace>
class Dare : public ComposedPolicy<Scalar, ExecSpace, DareMask, IdentityTransform> {
 public:
  explicit Dare(const MergeProblem& problem, DareMask mask = {}, const Composition& composition = {})
      : ComposedPolicy<Scalar, ExecSpace, DareMask, IdentityTransform>("camex::Dare", problem, composition,
                                                                        checked(mask), {}) {}

 private:
  static DareMask checked(const DareMask& mask) {
    mask.check("camex::Dare");
    return mask;
  }
};

}  // namespace camex
