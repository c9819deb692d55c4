#pragma once
// A GPT-style decoder whose MLPs are camex merged layers (or dense, for the baseline):
//
//   x_0 = wte[tokens] + wpe[positions]
//   m_l = x_l + proj_l(attention_l(ln1_l(x_l)))            causal multi-head self-attention
//   x_{l+1} = m_l + mlp_l(ln2_l(m_l))                       DenseMlp or MergedMlp (common/nn/mlp.hpp)
//   loss = cross-entropy(lnf(x_L) wte^T, next tokens)       the LM head is tied to the token embedding
//
// llm.c style: one forward and one backward per layer, the activations of the last forward kept per layer, the
// model's tensors in one arena (common/train/parameters.hpp). The routers' auxiliary losses are added to the
// objective; forward reports them apart from the cross-entropy.

#include <camex/camex.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/nn/attention.hpp"
#include "common/nn/cross_entropy.hpp"
#include "common/nn/embedding.hpp"
#include "common/nn/layer_norm.hpp"
#include "common/nn/linear.hpp"
#include "common/nn/mlp.hpp"
#include "common/train/parameters.hpp"

namespace camex::examples {

struct GptShape {
  std::size_t vocab = 0;
  std::size_t context = 0;    ///< L, tokens per sequence
  std::size_t channels = 0;   ///< C
  std::size_t heads = 0;
  std::size_t layers = 0;
  std::size_t hidden = 0;     ///< MLP width, 4 C in GPT-2
  std::size_t sequences = 0;  ///< S, sequences per batch
  Activation activation = Activation::gelu_tanh;

  std::size_t tokens() const { return sequences * context; }
};

/// Training FLOPs per token of the dense-equivalent model (forward + backward = 3 x forward): the projections, the
/// attention products as computed (the full L x L block), the MLP at one merged weight, the tied head. The merge
/// policies' own work (masks, curvature transforms, merges) is extra and not counted, so a GFLOP/s figure from this
/// count is a lower bound for merged models.
inline double model_flops_per_token(const GptShape& s) {
  const double c = static_cast<double>(s.channels), h = static_cast<double>(s.hidden), l = static_cast<double>(s.context);
  const double per_layer = 2 * c * 3 * c + 2 * c * c + 2 * 2 * l * c + 2 * 2 * c * h;
  return 3 * (static_cast<double>(s.layers) * per_layer + 2 * c * static_cast<double>(s.vocab));
}

struct LossParts {
  double cross_entropy = 0;
  double aux = 0;  ///< the routers' balancing losses (already scaled by their coefficients)
};

/// out = a + b: the residual connection.
template <class T, class Space>
void residual_add(const Space& space, const Mat<T, Space>& a, const Mat<T, Space>& b, const Mat<T, Space>& out) {
  Kokkos::parallel_for("Gpt[residual]", Kokkos::RangePolicy<Space>(space, 0, out.size()),
                       KOKKOS_LAMBDA(std::size_t w) { out.data()[w] = a.data()[w] + b.data()[w]; });
}

template <class T, class Space, class Mlp>
class Gpt {
 public:
  /// `make_mlp(l)` builds layer l's MLP (its policies and routers, if any, outlive the model).
  Gpt(const GptShape& shape, const std::function<std::unique_ptr<Mlp>(std::size_t)>& make_mlp) : shape_(shape) {
    constexpr const char* fn = "Gpt";
    if (shape.vocab < 2) throw argument_error(fn, "shape.vocab", "at least 2 tokens", concat(shape.vocab));
    if (shape.layers == 0) throw argument_error(fn, "shape.layers", "at least one layer", "0");
    if (shape.context == 0 || shape.sequences == 0)
      throw argument_error(fn, "shape", "at least one sequence of at least one token",
                           concat(shape.sequences, " x ", shape.context));
    const std::size_t n = shape.tokens(), c = shape.channels;
    const double proj_std = 0.02 / std::sqrt(2.0 * shape.layers);
    wte_ = arena_.add("wte", {shape.vocab, c}, true, Init::normal(0.02));
    wpe_ = arena_.add("wpe", {shape.context, c}, true, Init::normal(0.02));
    DrawStreams streams;
    for (std::size_t l = 0; l < shape.layers; ++l) {
      const std::string p = layer_prefix(l);
      Block b(CausalSelfAttention<T, Space>(shape.sequences, shape.context, c, shape.heads), make_mlp(l));
      b.mlp_stream = streams.take(Mlp::random_streams);
      b.ln1_w = arena_.add(p + "ln1.weight", {c}, false, Init::ones());
      b.ln1_b = arena_.add(p + "ln1.bias", {c}, false, Init::zeros());
      b.attn_w = arena_.add(p + "attn.weight", {3 * c, c}, true, Init::normal(0.02));
      b.attn_b = arena_.add(p + "attn.bias", {3 * c}, false, Init::zeros());
      b.attn_proj_w = arena_.add(p + "attn.proj.weight", {c, c}, true, Init::normal(proj_std));
      b.attn_proj_b = arena_.add(p + "attn.proj.bias", {c}, false, Init::zeros());
      b.ln2_w = arena_.add(p + "ln2.weight", {c}, false, Init::ones());
      b.ln2_b = arena_.add(p + "ln2.bias", {c}, false, Init::zeros());
      b.mlp->declare(arena_, p + "mlp.", proj_std);
      b.residual = Mat<T, Space>("residual", n, c);
      b.ln1 = Mat<T, Space>("ln1", n, c);
      b.qkv = Mat<T, Space>("qkv", n, 3 * c);
      b.attended = Mat<T, Space>("attended", n, c);
      b.mid = Mat<T, Space>("mid", n, c);
      b.ln2 = Mat<T, Space>("ln2", n, c);
      for (Vec<T, Space>* v : {&b.ln1_mean, &b.ln1_rstd, &b.ln2_mean, &b.ln2_rstd}) *v = Vec<T, Space>("ln_stats", n);
      blocks_.push_back(std::move(b));
    }
    lnf_w_ = arena_.add("lnf.weight", {c}, false, Init::ones());
    lnf_b_ = arena_.add("lnf.bias", {c}, false, Init::zeros());
    arena_.allocate();
    for (auto& b : blocks_) b.mlp->bind(arena_);
    final_ = Mat<T, Space>("final", n, c);
    lnf_ = Mat<T, Space>("lnf", n, c);
    lnf_mean_ = Vec<T, Space>("lnf_mean", n);
    lnf_rstd_ = Vec<T, Space>("lnf_rstd", n);
    probabilities_ = Mat<T, Space>("probabilities", n, shape.vocab);
    branch_ = Mat<T, Space>("branch", n, c);
    d_residual_ = Mat<T, Space>("d_residual", n, c);
    d_normed_ = Mat<T, Space>("d_normed", n, c);
    d_attended_ = Mat<T, Space>("d_attended", n, c);
    d_qkv_ = Mat<T, Space>("d_qkv", n, 3 * c);
  }

  const GptShape& shape() const { return shape_; }
  ParameterArena<T, Space>& arena() { return arena_; }
  const ParameterArena<T, Space>& arena() const { return arena_; }
  Mlp& mlp(std::size_t l) { return *blocks_.at(l).mlp; }
  /// The softmax of the last forward's logits, [S·L, V] (until backward turns it into their gradient).
  const Mat<T, Space>& probabilities() const { return probabilities_; }

  /// Every trainable tensor: the arena's, then each MLP's library components'.
  std::vector<NamedTensor<T, Space>> tensors() {
    auto out = arena_.tensors();
    for (auto& b : blocks_)
      for (auto& t : b.mlp->component_parameters()) out.push_back(std::move(t));
    return out;
  }

  /// inputs and targets: S x L token ids each. The model's draw streams start at `step.stream`, each block's MLP
  /// taking Mlp::random_streams of them in layer order.
  LossParts forward(const Space& space, const StepContext& step, const TokenIds<Space>& inputs,
                    const TokenIds<Space>& targets) {
    constexpr const char* fn = "Gpt::forward";
    require_length(fn, "inputs", inputs, shape_.tokens(), "sequences x context");
    require_length(fn, "targets", targets, shape_.tokens(), "sequences x context");
    inputs_ = inputs;
    targets_ = targets;
    LossParts loss;
    // Every block's checks and balancing losses are read back together, once the step's forward is queued.
    loss.aux = with_step_read_backs(space, step, read_backs_, [&](const StepContext& batched) {
      double aux = 0;
      embedding_forward(space, inputs, value(wte_), value(wpe_), blocks_[0].residual);
      for (std::size_t l = 0; l < blocks_.size(); ++l) {
        Block& b = blocks_[l];
        layer_norm_forward(space, b.residual, vector(b.ln1_w), vector(b.ln1_b), b.ln1, b.ln1_mean, b.ln1_rstd);
        linear_forward(space, b.ln1, value(b.attn_w), vector(b.attn_b), b.qkv);
        b.attention.forward(space, b.qkv, b.attended);
        linear_forward(space, b.attended, value(b.attn_proj_w), vector(b.attn_proj_b), branch_);
        residual_add(space, b.residual, branch_, b.mid);
        layer_norm_forward(space, b.mid, vector(b.ln2_w), vector(b.ln2_b), b.ln2, b.ln2_mean, b.ln2_rstd);
        aux += b.mlp->forward(space, batched.substream(b.mlp_stream), b.ln2, branch_);
        residual_add(space, b.mid, branch_, l + 1 < blocks_.size() ? blocks_[l + 1].residual : final_);
      }
      layer_norm_forward(space, final_, vector(lnf_w_), vector(lnf_b_), lnf_, lnf_mean_, lnf_rstd_);
      loss.cross_entropy = tied_head_forward(space, lnf_, value(wte_), targets, probabilities_);
      return aux;
    });
    return loss;
  }

  /// Gradients of cross_entropy + aux for the last forward: the arena's are overwritten, the components' by
  /// the components.
  void backward(const Space& space) {
    arena_.zero_gradients(space);
    Kokkos::deep_copy(space, d_normed_, T(0));
    tied_head_backward(space, lnf_, value(wte_), targets_, probabilities_, 1.0, d_normed_, gradient(wte_));
    Kokkos::deep_copy(space, d_residual_, T(0));
    layer_norm_backward(space, final_, vector(lnf_w_), lnf_mean_, lnf_rstd_, d_normed_, d_residual_,
                        gradient_vector(lnf_w_), gradient_vector(lnf_b_));
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      Block& b = blocks_[l];
      // d_residual holds dL/dx_{l+1}; x_{l+1} = m_l + mlp(ln2(m_l)).
      b.mlp->backward(space, d_residual_, d_normed_);
      layer_norm_backward(space, b.mid, vector(b.ln2_w), b.ln2_mean, b.ln2_rstd, d_normed_, d_residual_,
                          gradient_vector(b.ln2_w), gradient_vector(b.ln2_b));
      // Now dL/dm_l; m_l = x_l + proj(attention(ln1(x_l))).
      Kokkos::deep_copy(space, d_attended_, T(0));
      linear_backward(space, b.attended, value(b.attn_proj_w), d_residual_, d_attended_, gradient(b.attn_proj_w),
                      gradient_vector(b.attn_proj_b));
      b.attention.backward(space, d_attended_, d_qkv_);
      Kokkos::deep_copy(space, d_normed_, T(0));
      linear_backward(space, b.ln1, value(b.attn_w), d_qkv_, d_normed_, gradient(b.attn_w), gradient_vector(b.attn_b));
      layer_norm_backward(space, b.residual, vector(b.ln1_w), b.ln1_mean, b.ln1_rstd, d_normed_, d_residual_,
                          gradient_vector(b.ln1_w), gradient_vector(b.ln1_b));
    }
    embedding_backward(space, inputs_, d_residual_, gradient(wte_), gradient(wpe_));
  }

 private:
  struct Block {
    Block(CausalSelfAttention<T, Space> a, std::unique_ptr<Mlp> m) : attention(std::move(a)), mlp(std::move(m)) {}
    CausalSelfAttention<T, Space> attention;
    std::unique_ptr<Mlp> mlp;
    std::uint32_t mlp_stream = 0;  // the first of the MLP's draw streams
    std::size_t ln1_w = 0, ln1_b = 0, attn_w = 0, attn_b = 0, attn_proj_w = 0, attn_proj_b = 0, ln2_w = 0, ln2_b = 0;
    Mat<T, Space> residual, ln1, qkv, attended, mid, ln2;
    Vec<T, Space> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd;
  };

  /// "h<l>." (built by appends: GCC 12 warns falsely about `"h" + std::to_string(l)`, its bug 105329).
  static std::string layer_prefix(std::size_t l) {
    std::string p("h");
    p.append(std::to_string(l)).push_back('.');
    return p;
  }

  Mat<T, Space> value(std::size_t i) const { return arena_.value(i); }
  Mat<T, Space> gradient(std::size_t i) const { return arena_.gradient(i); }
  Vec<T, Space> vector(std::size_t i) const { return arena_.value_vector(i); }
  Vec<T, Space> gradient_vector(std::size_t i) const { return arena_.gradient_vector(i); }

  GptShape shape_;
  ParameterArena<T, Space> arena_;
  std::size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0;
  std::vector<Block> blocks_;
  TokenIds<Space> inputs_, targets_;
  Mat<T, Space> final_, lnf_, probabilities_, branch_, d_residual_, d_normed_, d_attended_, d_qkv_;
  Vec<T, Space> lnf_mean_, lnf_rstd_;
  ReadBackBatch<Space> read_backs_;
};

}  // namespace camex::examples
