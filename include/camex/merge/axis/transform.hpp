#pragma once
// The transform axis of a composed policy (docs/policies/README.md: mask × transform × base): tau~_i = T_i(x_i) applied to every (masked) delta before
// it is merged. A transform is linear in x, may own trainable parameters, and states:
//   is_identity (static): whether T is the identity (the composed policy then skips the buffers T needs);
//   layout<T>(carver): the scratch apply/backward take;
//   apply(space, x, y, carver): y[i] = T_i(x[i]) for the [n, P] stacks;
//   backward(space, x, d_y, d_x, carver): d_x[i] = T_i^T(d_y[i]), and overwrites the parameters' gradients;
//   parameters(): the trainable arrays with their gradients.

#include <vector>

#include "camex/merge/concepts.hpp"

namespace camex {

template <class Tr, class Scalar, class ExecSpace>
concept TransformAxis =
    requires { { Tr::is_identity } -> std::convertible_to<bool>; } &&
    (Tr::is_identity ||
     requires(Tr& transform, const Tr& ctransform, const ExecSpace& space, WorkspaceCarver<ExecSpace>& carver,
              const ConstMatrix<Scalar, ExecSpace>& in,
              const typename WorkspaceCarver<ExecSpace>::template Matrix<Scalar>& out) {
       ctransform.template layout<Scalar>(carver);
       ctransform.apply(space, in, out, carver);
       transform.backward(space, in, in, out, carver);
       { transform.parameters() } -> std::same_as<std::vector<Parameter<Scalar, ExecSpace>>>;
     });

/// T_i(x) = x.
struct IdentityTransform {
  static constexpr bool is_identity = true;
};

}  // namespace camex
