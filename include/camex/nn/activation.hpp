#pragma once
// The elementwise activations between an MLP's two linears (the merged FFN's, and a user's own layers'): their
// definitions in double, their float evaluation, and the forward and backward kernels over [rows, columns]
// arrays.
//
// GPT-2's GELU is evaluated as h sigmoid(2u), the same function as its tanh form 0.5 h (1 + tanh u), but without
// the form's cancellation: for h below about -6, 1 + tanh u loses every digit (in double too). Its derivative
// comes from the same exponential, s + 2 h c (1 + 3 k h^2) e s^2 with e = e^(-2u), s = 1 / (1 + e): s (1 - s) =
// e s^2 stays accurate where s is near 1, and e s^2 is formed before the large factor. The exponent is clamped
// (at 700 in double; branch_free_exp clamps at 88 in float) so e stays finite and e s^2 is not infinity times 0.
// The exact GELU's Phi(h) is erfc(-h / sqrt 2) / 2, not (1 + erf(h / sqrt 2)) / 2, whose sum cancels to nothing
// for h below about -5 (-8 in double).
//
// Double arrays are evaluated with libm's exp and erfc: the reference the float evaluation is tested against
// (tests/nn/activation.cpp). Float arrays are evaluated in float, with the branch-free e^x so that the host loop
// vectorises (math::elementwise_exp picks it).

#include <Kokkos_Core.hpp>

#include <concepts>
#include <cstddef>

#include "camex/core/error.hpp"
#include "camex/core/schedule.hpp"
#include "camex/core/views.hpp"
#include "camex/kernels/row_spans.hpp"
#include "camex/platform/branch_free_math.hpp"
#include "camex/platform/kokkos_compat.hpp"
#include "camex/platform/vectorize.hpp"

namespace camex {

enum class Activation {
  gelu_tanh,  ///< GPT-2's GELU: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))
  gelu,       ///< the exact GELU: h Phi(h)
  relu,       ///< T5's: max(h, 0)
};

/// act(h) and act'(h) in Real, float or double (device code too), as the header's comment describes.
template <std::floating_point Real>
KOKKOS_INLINE_FUNCTION Real activate(Activation act, Real h, Real* derivative) {
  switch (act) {
    case Activation::relu:
      *derivative = h > 0 ? Real(1) : Real(0);
      return h > 0 ? h : Real(0);
    case Activation::gelu: {
      const Real cdf = Real(0.5) * math::erfc(h * Real(-0.70710678118654752440));  // Phi(h), 1 / sqrt 2
      *derivative = cdf + h * Real(0.39894228040143267794) * math::elementwise_exp(-h * h / 2);  // 1 / sqrt(2 pi)
      return h * cdf;
    }
    case Activation::gelu_tanh:
    default: {
      constexpr Real c = Real(0.79788456080286535588), k = Real(0.044715);  // sqrt(2/pi)
      const Real exponent = -2 * c * (h + k * h * h * h);
      const Real e = math::elementwise_exp(exponent < 700 ? exponent : Real(700));
      const Real s = 1 / (1 + e);
      *derivative = s + 2 * h * c * (1 + 3 * k * h * h) * (e * s * s);
      return h * s;
    }
  }
}

namespace detail {

template <class Hidden, class Other>
void require_activation_operand(const char* function, const char* name, const Hidden& hidden, const Other& other) {
  require_shape(function, name, other, hidden.extent(0), hidden.extent(1), "the shape of hidden");
}

/// The entries' loop, one per activation, so the compiler sees a loop of one function.
template <Activation act, class Hidden, class Activated>
KOKKOS_INLINE_FUNCTION void activate_span(const Hidden& hidden, const Activated& activated, std::size_t row,
                                          std::size_t begin, std::size_t end) {
  using Scalar = typename Activated::non_const_value_type;
  CAMEX_IVDEP
  for (std::size_t j = begin; j < end; ++j) {
    Scalar unused;
    activated(row, j) = activate(act, hidden(row, j), &unused);
  }
}

template <Activation act, class Hidden, class DActivated, class DHidden>
KOKKOS_INLINE_FUNCTION void differentiate_span(const Hidden& hidden, const DActivated& d_activated, const DHidden& d_hidden,
                                               bool accumulate, std::size_t row, std::size_t begin, std::size_t end) {
  using Scalar = typename DHidden::non_const_value_type;
  CAMEX_IVDEP
  for (std::size_t j = begin; j < end; ++j) {
    Scalar derivative;
    activate(act, hidden(row, j), &derivative);
    const Scalar d = derivative * d_activated(row, j);
    d_hidden(row, j) = accumulate ? d_hidden(row, j) + d : d;
  }
}

}  // namespace detail

/// activated = act(hidden) for [rows, columns] views of float or double; `activated` may be `hidden`.
template <class ExecSpace, class Hidden, class Activated>
void activation_forward(const ExecSpace& space, Activation act, const Hidden& hidden, const Activated& activated,
                        Schedule schedule = Schedule::automatic) {
  detail::require_activation_operand("camex::activation_forward", "activated", hidden, activated);
  for_each_row_span(
      space, "camex::activation_forward", hidden.extent(0), hidden.extent(1),
      KOKKOS_LAMBDA(std::size_t row, std::size_t begin, std::size_t end) {
        switch (act) {
          case Activation::relu: detail::activate_span<Activation::relu>(hidden, activated, row, begin, end); break;
          case Activation::gelu: detail::activate_span<Activation::gelu>(hidden, activated, row, begin, end); break;
          case Activation::gelu_tanh:
          default: detail::activate_span<Activation::gelu_tanh>(hidden, activated, row, begin, end);
        }
      },
      schedule);
}

/// d_hidden = act'(hidden) .* d_activated, or (accumulate) d_hidden += that; `d_hidden` may be `d_activated`.
template <class ExecSpace, class Hidden, class DActivated, class DHidden>
void activation_backward(const ExecSpace& space, Activation act, const Hidden& hidden, const DActivated& d_activated,
                         const DHidden& d_hidden, bool accumulate, Schedule schedule = Schedule::automatic) {
  constexpr const char* fn = "camex::activation_backward";
  detail::require_activation_operand(fn, "d_activated", hidden, d_activated);
  detail::require_activation_operand(fn, "d_hidden", hidden, d_hidden);
  for_each_row_span(
      space, fn, hidden.extent(0), hidden.extent(1),
      KOKKOS_LAMBDA(std::size_t row, std::size_t begin, std::size_t end) {
        switch (act) {
          case Activation::relu:
            detail::differentiate_span<Activation::relu>(hidden, d_activated, d_hidden, accumulate, row, begin, end);
            break;
          case Activation::gelu:
            detail::differentiate_span<Activation::gelu>(hidden, d_activated, d_hidden, accumulate, row, begin, end);
            break;
          case Activation::gelu_tanh:
          default:
            detail::differentiate_span<Activation::gelu_tanh>(hidden, d_activated, d_hidden, accumulate, row, begin, end);
        }
      },
      schedule);
}

}  // namespace camex
