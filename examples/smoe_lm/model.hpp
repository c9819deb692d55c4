#pragma once
// A GPT-style decoder whose MLPs are camex merged layers (or dense, for the baseline):
//
//   x_0 = wte[tokens] + wpe[positions]
//   x_{l+1} = block_l(x_l)                                  pre-LN, causal attention (common/nn/transformer_block.hpp),
//                                                           a DenseMlp or MergedMlp (common/nn/mlp.hpp)
//   loss = cross-entropy(lnf(x_L) wte^T, next tokens)       the LM head is tied to the token embedding
//
// llm.c style: one forward and one backward per layer, the model's tensors in one arena
// (common/train/parameters.hpp), the activations of the last forward and their gradients in another
// (common/train/activations.hpp), the gradients zeroed once per step and added to by every backward. The
// routers' auxiliary losses are added to the
// objective; forward reports them apart from the cross-entropy.

#include <camex/camex.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/nn/layer_norm.hpp"
#include "common/nn/mlp.hpp"
#include "common/nn/transformer_block.hpp"
#include "common/text/embedding.hpp"
#include "common/text/tied_head.hpp"
#include "common/train/activations.hpp"
#include "common/train/backward_groups.hpp"
#include "common/train/loss.hpp"
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

/// A GPT whose blocks' MLPs come from `make_mlp(l)` (dense, or merged with any policy; the policies and routers a
/// merged MLP uses outlive the model).
template <class T, class Space>
class Gpt {
 public:
  using MlpFactory = std::function<std::unique_ptr<MlpLayer<T, Space>>(std::size_t layer)>;

  Gpt(const GptShape& shape, const MlpFactory& make_mlp) : shape_(shape) {
    constexpr const char* fn = "Gpt";
    if (shape.vocab < 2) throw argument_error(fn, "shape.vocab", "at least 2 tokens", concat(shape.vocab));
    if (shape.layers == 0) throw argument_error(fn, "shape.layers", "at least one layer", "0");
    if (shape.context == 0 || shape.sequences == 0)
      throw argument_error(fn, "shape", "at least one sequence of at least one token",
                           concat(shape.sequences, " x ", shape.context));
    const std::size_t n = shape.tokens(), c = shape.channels;
    const double proj_std = 0.02 / std::sqrt(2.0 * shape.layers);
    wte_ = parameters_.add("wte", {shape.vocab, c}, true, Init::normal(0.02));
    wpe_ = parameters_.add("wpe", {shape.context, c}, true, Init::normal(0.02));
    const BlockShape block{.sequences = shape.sequences, .context = shape.context, .channels = c, .heads = shape.heads,
                           .mask = AttentionMask::causal};
    DrawStreams streams;
    using Part = typename ActivationArena<T, Space>::Part;
    residuals_.resize(shape.layers + 1);
    d_residuals_.resize(shape.layers + 1);
    for (std::size_t l = 0; l < shape.layers; ++l) {
      blocks_.push_back(std::make_unique<TransformerBlock<T, Space>>(block, make_mlp(l), streams));
      const std::size_t first = parameters_.count();
      blocks_.back()->declare(parameters_, activations_, layer_prefix(l), proj_std);
      block_tensors_.emplace_back(first, parameters_.count());
    }
    lnf_w_ = parameters_.add("lnf.weight", {c}, false, Init::ones());
    lnf_b_ = parameters_.add("lnf.bias", {c}, false, Init::zeros());
    for (std::size_t l = 0; l <= shape.layers; ++l) {
      activations_.add(Part::values, n, c, &residuals_[l]);
      activations_.add(Part::gradients, n, c, &d_residuals_[l]);
    }
    activations_.add(Part::values, n, c, &lnf_);
    activations_.add(Part::values, n, &lnf_mean_);
    activations_.add(Part::values, n, &lnf_rstd_);
    activations_.add(Part::values, n, shape.vocab, &probabilities_);
    activations_.add(Part::gradients, n, c, &d_lnf_);
    loss_terms_ = Kokkos::View<double*, typename Space::memory_space>("smoe_lm.loss_terms", cross_entropy_row_terms(n));
    parameters_.allocate();
    activations_.allocate();
    for (auto& b : blocks_) b->bind(parameters_);
  }

  const GptShape& shape() const { return shape_; }
  ParameterArena<T, Space>& arena() { return parameters_; }
  const ParameterArena<T, Space>& arena() const { return parameters_; }
  MlpLayer<T, Space>& mlp(std::size_t l) { return blocks_.at(l)->mlp(); }
  /// The softmax of the last forward's logits, [S·L, V] (until backward turns it into their gradient).
  const Mat<T, Space>& probabilities() const { return probabilities_; }

  /// Every trainable tensor: the arena's, then each MLP's library components'.
  std::vector<NamedTensor<T, Space>> tensors() {
    auto out = parameters_.tensors();
    for (auto& b : blocks_)
      for (auto& t : b->mlp().component_parameters()) out.push_back(std::move(t));
    return out;
  }

  /// backward's groups: the final norm, the blocks from the last, then the embeddings (wte, tied to the head, last).
  BackwardGroups backward_groups() {
    TransformerTensors where{.arena = parameters_.count(), .blocks = block_tensors_, .components = {}};
    for (auto& b : blocks_) where.components.push_back(b->mlp().component_parameters().size());
    return transformer_groups(where, {lnf_w_, lnf_b_}, {wte_, wpe_});
  }

  /// inputs and targets: S x L token ids each. The model's draw streams start at `step.stream`, each block's MLP
  /// taking its random_streams() of them in layer order.
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
      embedding_forward(space, inputs, value(wte_), value(wpe_), residuals_[0]);
      for (std::size_t l = 0; l < blocks_.size(); ++l) aux += blocks_[l]->forward(space, batched, residuals_[l], residuals_[l + 1]);
      layer_norm_forward(space, residuals_.back(), vector(lnf_w_), vector(lnf_b_), lnf_, lnf_mean_, lnf_rstd_);
      loss.cross_entropy = tied_head_forward(space, lnf_, value(wte_), targets, probabilities_, loss_terms_);
      return aux;
    });
    return loss;
  }

  /// The step's one zeroing: every parameter gradient of the arena and every activation gradient.
  void zero_gradients(const Space& space) {
    parameters_.zero_gradients(space);
    activations_.zero_gradients(space);
  }

  /// Adds the gradients of cross_entropy + aux for the last forward into the zeroed arenas (the library
  /// components write theirs, see nn/mlp.hpp), telling `ready` as each of backward_groups() is final.
  void backward(const Space& space, const GradientsReady& ready = {}) {
    const auto finished = [&](std::size_t group) {
      if (ready) ready(group);
    };
    tied_head_backward(space, lnf_, value(wte_), targets_, probabilities_, 1.0, d_lnf_, gradient(wte_));
    layer_norm_backward(space, residuals_.back(), vector(lnf_w_), lnf_mean_, lnf_rstd_, d_lnf_, d_residuals_.back(),
                        gradient_vector(lnf_w_), gradient_vector(lnf_b_));
    finished(0);
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      blocks_[l]->backward(space, d_residuals_[l + 1], d_residuals_[l]);
      finished(blocks_.size() - l);
    }
    embedding_backward(space, inputs_, d_residuals_[0], gradient(wte_), gradient(wpe_));
    finished(blocks_.size() + 1);
  }

 private:
  /// "h<l>." (built by appends: GCC 12 warns falsely about `"h" + std::to_string(l)`, its bug 105329).
  static std::string layer_prefix(std::size_t l) {
    std::string p("h");
    p.append(std::to_string(l)).push_back('.');
    return p;
  }

  Mat<T, Space> value(std::size_t i) const { return parameters_.value(i); }
  Mat<T, Space> gradient(std::size_t i) const { return parameters_.gradient(i); }
  Vec<T, Space> vector(std::size_t i) const { return parameters_.value_vector(i); }
  Vec<T, Space> gradient_vector(std::size_t i) const { return parameters_.gradient_vector(i); }

  GptShape shape_;
  ParameterArena<T, Space> parameters_;
  ActivationArena<T, Space> activations_;
  std::size_t wte_ = 0, wpe_ = 0, lnf_w_ = 0, lnf_b_ = 0;
  std::vector<std::unique_ptr<TransformerBlock<T, Space>>> blocks_;
  std::vector<std::pair<std::size_t, std::size_t>> block_tensors_;  // each block's arena tensors [first, last)
  TokenIds<Space> inputs_, targets_;
  std::vector<Mat<T, Space>> residuals_, d_residuals_;  // x_0 (the embedding) .. x_L, and their gradients
  Mat<T, Space> lnf_, probabilities_, d_lnf_;
  Kokkos::View<double*, typename Space::memory_space> loss_terms_;  ///< the loss's per-row terms and sums
  Vec<T, Space> lnf_mean_, lnf_rstd_;
  ReadBackBatch<Space> read_backs_;
};

}  // namespace camex::examples
