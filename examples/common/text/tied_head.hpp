#pragma once
// The language-model head tied to the token embedding and its loss: logits = x wte^T ([N, V]), p = softmax per
// token, loss = mean over tokens of -log p[target]. The forward keeps p (in the logits buffer) for the backward:
// d_logits = (p - onehot(target)) d_loss / N, d_x += d_logits wte, d_wte += d_logits^T x. Losses are summed in
// double by a reduction whose order depends on the thread count only.

#include <cmath>

#include "common/nn/linear.hpp"
#include "common/nn/tensor.hpp"

namespace camex::examples {

template <class Space, class T>
double tied_head_forward(const Space& space, const InMat<T, Space>& x, const InMat<T, Space>& wte,
                         const TokenIds<Space>& targets, const Mat<T, Space>& probabilities) {
  constexpr const char* fn = "tied_head_forward";
  const std::size_t n = x.extent(0), vocab = wte.extent(0);
  require_shape(fn, "wte", wte, vocab, x.extent(1), "[V, C] with C = x's columns");
  require_length(fn, "targets", targets, n, "x's rows");
  require_shape(fn, "probabilities", probabilities, n, vocab, "[N, V]");
  matmul(space, x, Transpose::no, wte, Transpose::yes, probabilities, T(1), T(0));
  double total = 0;
  // One exp per logit, kept in place and normalised after: the head's V x N exps are a large part of a small
  // model's step.
  Kokkos::parallel_reduce("tied_head_forward[softmax]", Kokkos::RangePolicy<Space>(space, 0, n),
                          KOKKOS_LAMBDA(std::size_t t, double& sum) {
                            T top = probabilities(t, 0);
                            for (std::size_t v = 1; v < vocab; ++v) top = probabilities(t, v) > top ? probabilities(t, v) : top;
                            const double target = static_cast<double>(probabilities(t, targets(t)) - top);
                            double z = 0;
                            for (std::size_t v = 0; v < vocab; ++v) {
                              const T e = math::exp(probabilities(t, v) - top);
                              probabilities(t, v) = e;
                              z += e;
                            }
                            sum += math::log(z) - target;
                            const T inverse = static_cast<T>(1 / z);
                            for (std::size_t v = 0; v < vocab; ++v) probabilities(t, v) *= inverse;
                          },
                          total);
  return total / static_cast<double>(n);
}

/// Turns the probabilities of the last forward into d_logits (in place), then accumulates d_x and d_wte.
template <class Space, class T>
void tied_head_backward(const Space& space, const InMat<T, Space>& x, const InMat<T, Space>& wte,
                        const TokenIds<Space>& targets, const Mat<T, Space>& probabilities, double d_loss,
                        const Mat<T, Space>& d_x, const Mat<T, Space>& d_wte) {
  constexpr const char* fn = "tied_head_backward";
  const std::size_t n = x.extent(0), vocab = wte.extent(0);
  require_shape(fn, "probabilities", probabilities, n, vocab, "[N, V], as the forward left it");
  require_shape(fn, "d_x", d_x, n, x.extent(1), "the shape of x");
  require_shape(fn, "d_wte", d_wte, vocab, x.extent(1), "the shape of wte");
  const T scale = static_cast<T>(d_loss / static_cast<double>(n));
  Kokkos::parallel_for("tied_head_backward[d_logits]", Kokkos::RangePolicy<Space>(space, 0, n * vocab),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t t = w / vocab, v = w % vocab;
                         probabilities(t, v) = scale * (probabilities(t, v) - (static_cast<std::int32_t>(v) == targets(t) ? T(1) : T(0)));
                       });
  matmul(space, probabilities, Transpose::no, wte, Transpose::no, d_x, T(1), T(1));
  matmul(space, probabilities, Transpose::yes, x, Transpose::no, d_wte, T(1), T(1));
}

}  // namespace camex::examples
