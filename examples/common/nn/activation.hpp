#pragma once
// Elementwise activations between the two linears of a dense MLP, with the same definitions the merged FFN uses
// (camex::Activation: GPT-2's tanh GELU, the exact GELU, ReLU), evaluated in double. The backward accumulates.

#include <camex/nn/merged_ffn.hpp>

#include "tensor.hpp"

namespace camex::examples {

template <class Space, class T>
void activation_forward(const Space& space, Activation act, const InMat<T, Space>& h, const Mat<T, Space>& y) {
  require_shape("activation_forward", "y", y, h.extent(0), h.extent(1), "the shape of h");
  Kokkos::parallel_for("activation_forward", Kokkos::RangePolicy<Space>(space, 0, h.size()), KOKKOS_LAMBDA(std::size_t w) {
    double unused;
    y.data()[w] = static_cast<T>(activate(act, h.data()[w], &unused));
  });
}

template <class Space, class T>
void activation_backward(const Space& space, Activation act, const InMat<T, Space>& h, const InMat<T, Space>& d_y,
                         const Mat<T, Space>& d_h) {
  constexpr const char* fn = "activation_backward";
  require_shape(fn, "d_y", d_y, h.extent(0), h.extent(1), "the shape of h");
  require_shape(fn, "d_h", d_h, h.extent(0), h.extent(1), "the shape of h");
  Kokkos::parallel_for("activation_backward", Kokkos::RangePolicy<Space>(space, 0, h.size()), KOKKOS_LAMBDA(std::size_t w) {
    double derivative;
    activate(act, h.data()[w], &derivative);
    d_h.data()[w] += static_cast<T>(derivative * d_y.data()[w]);
  });
}

}  // namespace camex::examples
