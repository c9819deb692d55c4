#pragma once
// Multi-head self-attention over sequences of `context` tokens, from the fused projection qkv [N, 3C] (q, k, v
// side by side, head h in columns h d .. h d + d of each, d = C / heads; GPT-2's layout) to y [N, C], the heads'
// outputs side by side (before the output projection):
//
//   A_h = softmax(q_h k_h^T / sqrt(d) + mask),   y_h = A_h v_h,
//
// the mask a parameter: causal (a language model: no token sees a later one) or none (a ViT: every patch sees
// every patch). q, k, v are copied into one [L, d] block per (sequence, head) so the products are batched GEMMs;
// the full L x L score block is computed and, when causal, the upper triangle masked (twice the needed flops for
// simpler, regular GEMMs). The
// object keeps the blocks and the probabilities of its last forward (in the model's activation arena) for the
// backward, so a model holds one per layer. The backward adds to d_qkv.

#include <cmath>
#include <string>

#include <camex/kernels/row_spans.hpp>
#include <camex/platform/branch_free_math.hpp>
#include <camex/platform/vectorize.hpp>

#include "common/train/activations.hpp"
#include "linear.hpp"
#include "tensor.hpp"

namespace camex::examples {

/// Which keys a query attends to.
enum class AttentionMask {
  causal,  ///< keys 0 .. t for the query at position t
  none,    ///< every key of the sequence
};

/// The (sequence, head) blocks [L, d] of columns part C .. part C + C of `from` [N, 3C] (part 0 q, 1 k, 2 v) into
/// `to` [S H L, d], for `heads` heads over sequences of `context` tokens. A row span is one token's head: d
/// contiguous entries on both sides.
template <class T, class Space>
void split_heads(const Space& space, const ConstMat<T, Space>& from, std::size_t part, std::size_t heads, std::size_t context,
                 const Mat<T, Space>& to) {
  const std::size_t d = to.extent(1), c = d * heads, h = heads, l = context, n = from.extent(0);
  for_each_row_span(space, "attention[split_heads]", n * h, d,
                    KOKKOS_LAMBDA(std::size_t r, std::size_t begin, std::size_t end) {
                      const std::size_t t = r / h, head = r % h, block_row = ((t / l) * h + head) * l + t % l;
                      CAMEX_IVDEP
                      for (std::size_t j = begin; j < end; ++j) to(block_row, j) = from(t, part * c + head * d + j);
                    });
}

/// The inverse: columns part C .. part C + C of `to` [N, kC] from the blocks `from` [S H L, d], overwritten or
/// (accumulate) added to.
template <class T, class Space>
void merge_heads(const Space& space, const Mat<T, Space>& from, std::size_t part, std::size_t heads, std::size_t context,
                 const Mat<T, Space>& to, bool accumulate) {
  const std::size_t d = from.extent(1), c = d * heads, h = heads, l = context, n = to.extent(0);
  for_each_row_span(space, "attention[merge_heads]", n * h, d,
                    KOKKOS_LAMBDA(std::size_t r, std::size_t begin, std::size_t end) {
                      const std::size_t t = r / h, head = r % h, block_row = ((t / l) * h + head) * l + t % l;
                      CAMEX_IVDEP
                      for (std::size_t j = begin; j < end; ++j) {
                        T& out = to(t, part * c + head * d + j);
                        out = accumulate ? out + from(block_row, j) : from(block_row, j);
                      }
                    });
}

/// Row r of att [S H L, L] is query r mod L: softmax over the keys its mask lets it see (causal: 0 .. r mod L, zero
/// above; none: all L).
template <class T, class Space>
void masked_softmax(const Space& space, AttentionMask mask, const Mat<T, Space>& att) {
  const std::size_t l = att.extent(1);
  const bool causal = mask == AttentionMask::causal;
  Kokkos::parallel_for("attention[softmax]", Kokkos::RangePolicy<Space>(space, 0, att.extent(0)), KOKKOS_LAMBDA(std::size_t r) {
    const std::size_t t = causal ? r % l : l - 1;  // the last key the query sees
    T top = att(r, 0);
    for (std::size_t s = 1; s <= t; ++s) top = att(r, s) > top ? att(r, s) : top;
    CAMEX_IVDEP
    for (std::size_t s = 0; s <= t; ++s) att(r, s) = math::elementwise_exp(att(r, s) - top);
    double sum = 0;
    for (std::size_t s = 0; s <= t; ++s) sum += att(r, s);
    const T inverse = static_cast<T>(1 / sum);
    for (std::size_t s = 0; s <= t; ++s) att(r, s) *= inverse;
    for (std::size_t s = t + 1; s < l; ++s) att(r, s) = 0;
  });
}

/// d_att <- scale A .* (d_att - rowsum(A .* d_att)): the gradient of the scaled scores, A = att.
template <class T, class Space>
void masked_softmax_backward(const Space& space, AttentionMask mask, const Mat<T, Space>& att, const Mat<T, Space>& d_att,
                             T scale) {
  const std::size_t l = att.extent(1);
  const bool causal = mask == AttentionMask::causal;
  Kokkos::parallel_for("attention[softmax_backward]", Kokkos::RangePolicy<Space>(space, 0, att.extent(0)),
                       KOKKOS_LAMBDA(std::size_t r) {
                         const std::size_t t = causal ? r % l : l - 1;
                         double dot = 0;
                         for (std::size_t s = 0; s <= t; ++s) dot += static_cast<double>(att(r, s)) * d_att(r, s);
                         for (std::size_t s = 0; s <= t; ++s) d_att(r, s) = static_cast<T>(scale * att(r, s) * (d_att(r, s) - dot));
                         for (std::size_t s = t + 1; s < l; ++s) d_att(r, s) = 0;
                       });
}

template <class T, class Space>
class SelfAttention {
 public:
  SelfAttention(std::size_t sequences, std::size_t context, std::size_t channels, std::size_t heads, AttentionMask mask)
      : sequences_(sequences), context_(context), channels_(channels), heads_(heads), mask_(mask) {
    if (heads == 0 || channels % heads != 0)
      throw argument_error("SelfAttention", "heads", concat("a divisor of the width ", channels),
                           concat(heads));
  }

  /// The per-head blocks and probabilities the backward reads, and the backward's scratch (overwritten before it
  /// is read, so with the values).
  void declare(ActivationArena<T, Space>& arena) {
    using Part = typename ActivationArena<T, Space>::Part;
    const std::size_t rows = sequences_ * heads_ * context_, d = channels_ / heads_;
    for (Mat<T, Space>* m : {&q_, &k_, &v_, &o_, &d_q_, &d_k_, &d_v_, &d_o_}) arena.add(Part::values, rows, d, m);
    arena.add(Part::values, rows, context_, &att_);
    arena.add(Part::values, rows, context_, &d_att_);
  }

  std::size_t tokens() const { return sequences_ * context_; }
  AttentionMask mask() const { return mask_; }
  std::size_t head_width() const { return channels_ / heads_; }

  void forward(const Space& space, const ConstMat<T, Space>& qkv, const Mat<T, Space>& y) {
    constexpr const char* fn = "SelfAttention::forward";
    require_shape(fn, "qkv", qkv, tokens(), 3 * channels_, "[N, 3C]");
    require_shape(fn, "y", y, tokens(), channels_, "[N, C]");
    split_heads(space, qkv, 0, heads_, context_, q_);
    split_heads(space, qkv, 1, heads_, context_, k_);
    split_heads(space, qkv, 2, heads_, context_, v_);
    const T scale = static_cast<T>(1 / std::sqrt(static_cast<double>(head_width())));
    batched(space, q_, Transpose::no, k_, Transpose::yes, att_, scale, T(0));
    masked_softmax(space, mask_, att_);
    batched(space, att_, Transpose::no, v_, Transpose::no, o_, T(1), T(0));
    merge_heads(space, o_, 0, heads_, context_, y, false);
  }

  /// Adds the gradient of the last forward's qkv to d_qkv.
  void backward(const Space& space, const ConstMat<T, Space>& d_y, const Mat<T, Space>& d_qkv) {
    constexpr const char* fn = "SelfAttention::backward";
    require_shape(fn, "d_y", d_y, tokens(), channels_, "[N, C]");
    require_shape(fn, "d_qkv", d_qkv, tokens(), 3 * channels_, "[N, 3C]");
    split_heads(space, d_y, 0, heads_, context_, d_o_);
    batched(space, d_o_, Transpose::no, v_, Transpose::yes, d_att_, T(1), T(0));
    batched(space, att_, Transpose::yes, d_o_, Transpose::no, d_v_, T(1), T(0));
    masked_softmax_backward(space, mask_, att_, d_att_, static_cast<T>(1 / std::sqrt(static_cast<double>(head_width()))));
    batched(space, d_att_, Transpose::no, k_, Transpose::no, d_q_, T(1), T(0));
    batched(space, d_att_, Transpose::yes, q_, Transpose::no, d_k_, T(1), T(0));
    merge_heads(space, d_q_, 0, heads_, context_, d_qkv, true);
    merge_heads(space, d_k_, 1, heads_, context_, d_qkv, true);
    merge_heads(space, d_v_, 2, heads_, context_, d_qkv, true);
  }

 private:
  /// One product per (sequence, head) block: c_i = alpha op(a_i) op(b_i) + beta c_i.
  void batched(const Space& space, const Mat<T, Space>& a, Transpose ta, const Mat<T, Space>& b,
               Transpose tb, const Mat<T, Space>& c, T alpha, T beta) const {
    const std::size_t blocks = sequences_ * heads_, l = context_;
    const std::size_t c_cols = c.extent(1), a_cols = a.extent(1), b_cols = b.extent(1);
    const bool at = ta == Transpose::yes;
    gemm(space, GemmBatch<T>{.transpose_a = ta, .transpose_b = tb, .m = static_cast<int>(l),
                                             .n = static_cast<int>(c_cols),
                                             .k = static_cast<int>(at ? l : a_cols), .alpha = alpha, .a = a.data(),
                                             .lda = static_cast<std::ptrdiff_t>(a_cols),
                                             .stride_a = static_cast<std::ptrdiff_t>(l * a_cols), .b = b.data(),
                                             .ldb = static_cast<std::ptrdiff_t>(b_cols),
                                             .stride_b = static_cast<std::ptrdiff_t>(l * b_cols), .beta = beta,
                                             .c = c.data(), .ldc = static_cast<std::ptrdiff_t>(c_cols),
                                             .stride_c = static_cast<std::ptrdiff_t>(l * c_cols),
                                             .batch = static_cast<int>(blocks)});
  }

  std::size_t sequences_, context_, channels_, heads_;
  AttentionMask mask_;
  Mat<T, Space> q_, k_, v_, o_, att_, d_q_, d_k_, d_v_, d_o_, d_att_;
};

}  // namespace camex::examples
