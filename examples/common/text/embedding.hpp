#pragma once
// Token and position embeddings: x[t] = wte[token t] + wpe[t mod context], for N = sequences x context tokens.
// The backward accumulates into the tables' gradients; every gradient entry is summed by one work item in token
// order, so the result does not depend on the thread count (no atomics).

#include "common/nn/tensor.hpp"

namespace camex::examples {

template <class Space, class T>
void embedding_forward(const Space& space, const TokenIds<Space>& tokens, const InMat<T, Space>& wte,
                       const InMat<T, Space>& wpe, const Mat<T, Space>& out) {
  constexpr const char* fn = "embedding_forward";
  const std::size_t n = tokens.extent(0), channels = wte.extent(1), context = wpe.extent(0);
  require_shape(fn, "wpe", wpe, context, channels, "[context, C] with C = wte's columns");
  require_shape(fn, "out", out, n, channels, "[N, C] with N = tokens");
  if (context == 0 || n % context != 0)
    throw argument_error(fn, "tokens", concat("a whole number of sequences of ", context, " tokens"),
                         concat(n, " tokens"));
  Kokkos::parallel_for("embedding_forward", Kokkos::RangePolicy<Space>(space, 0, n * channels),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t t = w / channels, c = w % channels;
                         out(t, c) = wte(tokens(t), c) + wpe(t % context, c);
                       });
}

template <class Space, class T>
void embedding_backward(const Space& space, const TokenIds<Space>& tokens, const InMat<T, Space>& d_out,
                        const Mat<T, Space>& d_wte, const Mat<T, Space>& d_wpe) {
  constexpr const char* fn = "embedding_backward";
  const std::size_t n = tokens.extent(0), channels = d_wte.extent(1), context = d_wpe.extent(0);
  require_shape(fn, "d_out", d_out, n, channels, "[N, C] with N = tokens");
  require_shape(fn, "d_wpe", d_wpe, context, channels, "[context, C]");
  // One channel per work item, tokens in order: a token table row collects its tokens' rows without races.
  Kokkos::parallel_for("embedding_backward[wte]", Kokkos::RangePolicy<Space>(space, 0, channels),
                       KOKKOS_LAMBDA(std::size_t c) {
                         for (std::size_t t = 0; t < n; ++t) d_wte(tokens(t), c) += d_out(t, c);
                       });
  const std::size_t sequences = n / context;
  Kokkos::parallel_for("embedding_backward[wpe]", Kokkos::RangePolicy<Space>(space, 0, context * channels),
                       KOKKOS_LAMBDA(std::size_t w) {
                         const std::size_t p = w / channels, c = w % channels;
                         T sum = 0;
                         for (std::size_t s = 0; s < sequences; ++s) sum += d_out(s * context + p, c);
                         d_wpe(p, c) += sum;
                       });
}

}  // namespace camex::examples
