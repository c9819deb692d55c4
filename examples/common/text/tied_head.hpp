#pragma once
// The language-model head tied to the token embedding and its loss: logits = x wte^T ([N, V]), p = softmax per
// token, loss = mean over tokens of -log p[target] (common/nn/softmax_cross_entropy.hpp). The forward keeps p (in
// the logits buffer) for the backward: d_logits = (p - onehot(target)) d_loss / N, d_x += d_logits wte,
// d_wte += d_logits^T x. `row_terms` is the loss's workspace (cross_entropy_row_terms(N) doubles).


#include "common/nn/linear.hpp"
#include "common/nn/softmax_cross_entropy.hpp"
#include "common/nn/tensor.hpp"

namespace camex::examples {

template <class Space, class T>
double tied_head_forward(const Space& space, const InMat<T, Space>& x, const InMat<T, Space>& wte,
                         const TokenIds<Space>& targets, const Mat<T, Space>& probabilities,
                         const Kokkos::View<double*, typename Space::memory_space>& row_terms) {
  constexpr const char* fn = "tied_head_forward";
  const std::size_t n = x.extent(0), vocab = wte.extent(0);
  require_shape(fn, "wte", wte, vocab, x.extent(1), "[V, C] with C = x's columns");
  require_length(fn, "targets", targets, n, "x's rows");
  require_shape(fn, "probabilities", probabilities, n, vocab, "[N, V]");
  matmul(space, x, Transpose::no, wte, Transpose::yes, probabilities, T(1), T(0));
  return softmax_cross_entropy_forward(space, probabilities, targets, row_terms).loss / static_cast<double>(n);
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
  softmax_cross_entropy_backward(space, probabilities, targets, d_loss);
  matmul(space, probabilities, Transpose::no, wte, Transpose::no, d_x, T(1), T(1));
  matmul(space, probabilities, Transpose::yes, x, Transpose::no, d_wte, T(1), T(1));
}

}  // namespace camex::examples
