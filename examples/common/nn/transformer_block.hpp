#pragma once
// The pre-LN transformer block both trainers stack (GPT-2's; the ViT's):
//
//   m = x + proj(attention(ln1(x)))        multi-head self-attention, causal or not (nn/attention.hpp)
//   y = m + mlp(ln2(m))                    any MlpLayer: dense, or merged with a camex policy (nn/mlp.hpp)
//
// The block declares its tensors under a name prefix ("h<l>."), its activations and gradients in the model's
// activation arena, and draws its MLP's random streams from the model's DrawStreams in construction order. Its
// backward adds dL/dx to d_x from dL/dy (both in the zeroed gradients part).

#include <camex/camex.hpp>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attention.hpp"
#include "layer_norm.hpp"
#include "linear.hpp"
#include "mlp.hpp"
#include "common/train/activations.hpp"
#include "common/train/parameters.hpp"

namespace camex::examples {

/// out = a + b: a residual connection.
template <class T, class Space>
void residual_forward(const Space& space, const InMat<T, Space>& a, const InMat<T, Space>& b, const Mat<T, Space>& out) {
  Kokkos::parallel_for("residual_forward", Kokkos::RangePolicy<Space>(space, 0, out.size()),
                       KOKKOS_LAMBDA(std::size_t w) { out.data()[w] = a.data()[w] + b.data()[w]; });
}

/// d_a += d_out: what a residual connection passes back to its skipped input.
template <class T, class Space>
void residual_backward(const Space& space, const InMat<T, Space>& d_out, const Mat<T, Space>& d_a) {
  Kokkos::parallel_for("residual_backward", Kokkos::RangePolicy<Space>(space, 0, d_a.size()),
                       KOKKOS_LAMBDA(std::size_t w) { d_a.data()[w] += d_out.data()[w]; });
}

struct BlockShape {
  std::size_t sequences = 0;  ///< S
  std::size_t context = 0;    ///< L, tokens per sequence
  std::size_t channels = 0;   ///< C
  std::size_t heads = 0;
  AttentionMask mask = AttentionMask::causal;
  std::size_t tokens() const { return sequences * context; }
};

template <class T, class Space>
class TransformerBlock {
 public:
  /// `mlp` is the block's MLP; its random streams are taken from `streams` now.
  TransformerBlock(const BlockShape& shape, std::unique_ptr<MlpLayer<T, Space>> mlp, DrawStreams& streams)
      : shape_(shape), attention_(shape.sequences, shape.context, shape.channels, shape.heads, shape.mask),
        mlp_(std::move(mlp)), mlp_stream_(streams.take(mlp_->random_streams())) {}

  /// GPT-2's initialisation: matrices N(0, 0.02^2), the residual projections' N(0, proj_std^2), norms 1 and 0.
  void declare(ParameterArena<T, Space>& parameters, ActivationArena<T, Space>& activations, const std::string& prefix,
               double proj_std) {
    const std::size_t c = shape_.channels, n = shape_.tokens();
    ln1_w_ = parameters.add(prefix + "ln1.weight", {c}, false, Init::ones());
    ln1_b_ = parameters.add(prefix + "ln1.bias", {c}, false, Init::zeros());
    attn_w_ = parameters.add(prefix + "attn.weight", {3 * c, c}, true, Init::normal(0.02));
    attn_b_ = parameters.add(prefix + "attn.bias", {3 * c}, false, Init::zeros());
    attn_proj_w_ = parameters.add(prefix + "attn.proj.weight", {c, c}, true, Init::normal(proj_std));
    attn_proj_b_ = parameters.add(prefix + "attn.proj.bias", {c}, false, Init::zeros());
    ln2_w_ = parameters.add(prefix + "ln2.weight", {c}, false, Init::ones());
    ln2_b_ = parameters.add(prefix + "ln2.bias", {c}, false, Init::zeros());
    mlp_->declare(parameters, prefix + "mlp.", proj_std);

    using Part = typename ActivationArena<T, Space>::Part;
    for (Mat<T, Space>* m : {&ln1_, &attended_, &attention_out_, &mid_, &ln2_, &mlp_out_}) activations.add(Part::values, n, c, m);
    activations.add(Part::values, n, 3 * c, &qkv_);
    for (Vec<T, Space>* v : {&ln1_mean_, &ln1_rstd_, &ln2_mean_, &ln2_rstd_}) activations.add(Part::values, n, v);
    for (Mat<T, Space>* m : {&d_ln1_, &d_attended_, &d_mid_, &d_ln2_}) activations.add(Part::gradients, n, c, m);
    activations.add(Part::gradients, n, 3 * c, &d_qkv_);
    attention_.declare(activations);
    mlp_->declare(activations);
  }

  void bind(const ParameterArena<T, Space>& parameters) {
    parameters_ = &parameters;
    mlp_->bind(parameters);
  }

  MlpLayer<T, Space>& mlp() { return *mlp_; }

  /// y [N, C] from x [N, C] (kept for the backward); returns the MLP's auxiliary loss. `step` is the model's.
  double forward(const Space& space, const StepContext& step, const InMat<T, Space>& x, const Mat<T, Space>& y) {
    x_ = x;
    layer_norm_forward(space, x, vector(ln1_w_), vector(ln1_b_), ln1_, ln1_mean_, ln1_rstd_);
    linear_forward(space, ln1_, value(attn_w_), vector(attn_b_), qkv_);
    attention_.forward(space, qkv_, attended_);
    linear_forward(space, attended_, value(attn_proj_w_), vector(attn_proj_b_), attention_out_);
    residual_forward(space, x, attention_out_, mid_);
    layer_norm_forward(space, mid_, vector(ln2_w_), vector(ln2_b_), ln2_, ln2_mean_, ln2_rstd_);
    const double aux = mlp_->forward(space, step.substream(mlp_stream_), ln2_, mlp_out_);
    residual_forward(space, mid_, mlp_out_, y);
    return aux;
  }

  /// Adds dL/dx to d_x, and every tensor's gradient to the arena's, from dL/dy of the last forward.
  void backward(const Space& space, const InMat<T, Space>& d_y, const Mat<T, Space>& d_x) {
    residual_backward(space, d_y, d_mid_);
    mlp_->backward(space, d_y, d_ln2_);
    layer_norm_backward(space, mid_, vector(ln2_w_), ln2_mean_, ln2_rstd_, d_ln2_, d_mid_, gradient_vector(ln2_w_),
                        gradient_vector(ln2_b_));
    linear_backward(space, attended_, value(attn_proj_w_), d_mid_, d_attended_, gradient(attn_proj_w_),
                    gradient_vector(attn_proj_b_));
    attention_.backward(space, d_attended_, d_qkv_);
    linear_backward(space, ln1_, value(attn_w_), d_qkv_, d_ln1_, gradient(attn_w_), gradient_vector(attn_b_));
    layer_norm_backward(space, x_, vector(ln1_w_), ln1_mean_, ln1_rstd_, d_ln1_, d_x, gradient_vector(ln1_w_),
                        gradient_vector(ln1_b_));
    residual_backward(space, d_mid_, d_x);
  }

 private:
  Mat<T, Space> value(std::size_t i) const { return parameters_->value(i); }
  Mat<T, Space> gradient(std::size_t i) const { return parameters_->gradient(i); }
  Vec<T, Space> vector(std::size_t i) const { return parameters_->value_vector(i); }
  Vec<T, Space> gradient_vector(std::size_t i) const { return parameters_->gradient_vector(i); }

  BlockShape shape_;
  SelfAttention<T, Space> attention_;
  std::unique_ptr<MlpLayer<T, Space>> mlp_;
  std::uint32_t mlp_stream_;  // the first of the MLP's draw streams
  const ParameterArena<T, Space>* parameters_ = nullptr;
  std::size_t ln1_w_ = 0, ln1_b_ = 0, attn_w_ = 0, attn_b_ = 0, attn_proj_w_ = 0, attn_proj_b_ = 0, ln2_w_ = 0, ln2_b_ = 0;
  ConstMat<T, Space> x_;
  Mat<T, Space> ln1_, qkv_, attended_, attention_out_, mid_, ln2_, mlp_out_;
  Vec<T, Space> ln1_mean_, ln1_rstd_, ln2_mean_, ln2_rstd_;
  Mat<T, Space> d_ln1_, d_qkv_, d_attended_, d_mid_, d_ln2_;
};

}  // namespace camex::examples
