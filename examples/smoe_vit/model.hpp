#pragma once
// A ViT classifier whose MLPs are camex merged layers in every block or in some (or dense, the baseline):
//
//   patches = patchify(images)                      p x p, row-major       (common/vision/patch_embedding.hpp)
//   x_0 = [cls,] patches W^T + b, + pos             a class token first when pooling by it
//   x_{l+1} = block_l(x_l)                          pre-LN, non-causal attention (common/nn/transformer_block.hpp)
//   z = pool(lnf(x_L))                              the class token's row, or the mean over the patches
//   loss = cross-entropy(z W_head^T + b_head, labels)
//
// llm.c style, as the language model: one forward and one backward per layer, the tensors in one arena, the
// activations and their gradients in another, the gradients zeroed once per step and added to by every backward.

#include <camex/camex.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/nn/layer_norm.hpp"
#include "common/nn/linear.hpp"
#include "common/nn/mlp.hpp"
#include "common/nn/softmax_cross_entropy.hpp"
#include "common/nn/transformer_block.hpp"
#include "common/train/activations.hpp"
#include "common/train/backward_groups.hpp"
#include "common/train/loss.hpp"
#include "common/train/parameters.hpp"
#include "common/vision/patch_embedding.hpp"

namespace camex::examples {

struct VitShape {
  PatchGrid grid;             ///< image size and patch size
  std::size_t channels = 0;   ///< C
  std::size_t heads = 0;
  std::size_t layers = 0;
  std::size_t hidden = 0;     ///< MLP width
  std::size_t classes = 0;    ///< K
  std::size_t images = 0;     ///< B, images per batch
  Pooling pooling = Pooling::class_token;
  Activation activation = Activation::gelu_tanh;

  /// L: tokens per image.
  std::size_t length() const { return grid.patches() + (pooling == Pooling::class_token ? 1 : 0); }
  std::size_t tokens() const { return images * length(); }
};

/// Training FLOPs per image of the dense-equivalent model (3 x forward): patch embedding, per block the
/// projections, the attention products over the full L x L block and the MLP at one merged weight, the head.
/// The merge policies' own work is extra and not counted.
inline double vit_flops_per_image(const VitShape& s) {
  const double c = static_cast<double>(s.channels), h = static_cast<double>(s.hidden), l = static_cast<double>(s.length());
  const double patches = static_cast<double>(s.grid.patches()), pp = static_cast<double>(s.grid.patch_pixels());
  const double per_layer = l * (2 * c * 3 * c + 2 * c * c + 2 * 2 * l * c + 2 * 2 * c * h);
  return 3 * (patches * 2 * pp * c + static_cast<double>(s.layers) * per_layer + 2 * c * static_cast<double>(s.classes));
}

template <class T, class Space>
class Vit {
 public:
  using MlpFactory = std::function<std::unique_ptr<MlpLayer<T, Space>>(std::size_t layer)>;
  using Labels = Kokkos::View<const std::int32_t*, typename Space::memory_space>;

  Vit(const VitShape& shape, const MlpFactory& make_mlp) : shape_(shape) {
    constexpr const char* fn = "Vit";
    shape.grid.check(fn);
    if (shape.layers == 0) throw argument_error(fn, "shape.layers", "at least one layer", "0");
    if (shape.classes < 2) throw argument_error(fn, "shape.classes", "at least 2 classes", concat(shape.classes));
    if (shape.images == 0) throw argument_error(fn, "shape.images", "at least one image per batch", "0");
    const std::size_t b = shape.images, c = shape.channels, l = shape.length(), n = shape.tokens();
    const std::size_t patches = b * shape.grid.patches();
    const double proj_std = 0.02 / std::sqrt(2.0 * shape.layers);
    patch_w_ = parameters_.add("patch.weight", {c, shape.grid.patch_pixels()}, true, Init::normal(0.02));
    patch_b_ = parameters_.add("patch.bias", {c}, false, Init::zeros());
    if (shape.pooling == Pooling::class_token) cls_ = parameters_.add("cls", {1, c}, false, Init::normal(0.02));
    pos_ = parameters_.add("pos", {l, c}, false, Init::normal(0.02));
    const BlockShape block{.sequences = b, .context = l, .channels = c, .heads = shape.heads, .mask = AttentionMask::none};
    DrawStreams streams;
    using Part = typename ActivationArena<T, Space>::Part;
    residuals_.resize(shape.layers + 1);
    d_residuals_.resize(shape.layers + 1);
    for (std::size_t l_index = 0; l_index < shape.layers; ++l_index) {
      blocks_.push_back(std::make_unique<TransformerBlock<T, Space>>(block, make_mlp(l_index), streams));
      const std::size_t first = parameters_.count();
      blocks_.back()->declare(parameters_, activations_, layer_prefix(l_index), proj_std);
      block_tensors_.emplace_back(first, parameters_.count());
    }
    lnf_w_ = parameters_.add("lnf.weight", {c}, false, Init::ones());
    lnf_b_ = parameters_.add("lnf.bias", {c}, false, Init::zeros());
    head_w_ = parameters_.add("head.weight", {shape.classes, c}, true, Init::normal(0.02));
    head_b_ = parameters_.add("head.bias", {shape.classes}, false, Init::zeros());

    activations_.add(Part::values, patches, shape.grid.patch_pixels(), &patches_);
    activations_.add(Part::values, patches, c, &patch_tokens_);
    activations_.add(Part::gradients, patches, c, &d_patch_tokens_);
    for (std::size_t i = 0; i <= shape.layers; ++i) {
      activations_.add(Part::values, n, c, &residuals_[i]);
      activations_.add(Part::gradients, n, c, &d_residuals_[i]);
    }
    activations_.add(Part::values, n, c, &lnf_);
    activations_.add(Part::values, n, &lnf_mean_);
    activations_.add(Part::values, n, &lnf_rstd_);
    activations_.add(Part::gradients, n, c, &d_lnf_);
    activations_.add(Part::values, b, c, &pooled_);
    activations_.add(Part::gradients, b, c, &d_pooled_);
    activations_.add(Part::values, b, shape.classes, &probabilities_);
    loss_terms_ = Kokkos::View<double*, typename Space::memory_space>("smoe_vit.loss_terms", cross_entropy_row_terms(b));
    parameters_.allocate();
    activations_.allocate();
    for (auto& blk : blocks_) blk->bind(parameters_);
  }

  const VitShape& shape() const { return shape_; }
  ParameterArena<T, Space>& arena() { return parameters_; }
  const ParameterArena<T, Space>& arena() const { return parameters_; }
  MlpLayer<T, Space>& mlp(std::size_t l) { return blocks_.at(l)->mlp(); }
  /// The softmax of the last forward's logits, [B, K] (until backward turns it into their gradient).
  const Mat<T, Space>& probabilities() const { return probabilities_; }

  std::vector<NamedTensor<T, Space>> tensors() {
    auto out = parameters_.tensors();
    for (auto& blk : blocks_)
      for (auto& t : blk->mlp().component_parameters()) out.push_back(std::move(t));
    return out;
  }

  /// backward's groups: the head and final norm, the blocks from the last, then the patch embedding and positions.
  BackwardGroups backward_groups() {
    TransformerTensors where{.arena = parameters_.count(), .blocks = block_tensors_, .components = {}};
    for (auto& blk : blocks_) where.components.push_back(blk->mlp().component_parameters().size());
    std::vector<std::size_t> tail{pos_, patch_w_, patch_b_};
    if (has_cls()) tail.push_back(cls_);
    return transformer_groups(where, {head_w_, head_b_, lnf_w_, lnf_b_}, tail);
  }

  /// images [B, rows x cols] (normalised), labels [B]; the loss and accuracy are the means over the first
  /// `counted` images (all by default). Each block's MLP takes its random_streams() of the model's draw streams from
  /// step.stream on, in block order.
  LossParts forward(const Space& space, const StepContext& step, const InMat<T, Space>& images, const Labels& labels,
                    std::size_t counted = static_cast<std::size_t>(-1)) {
    constexpr const char* fn = "Vit::forward";
    require_shape(fn, "images", images, shape_.images, shape_.grid.pixels(), "[B, rows x cols]");
    require_length(fn, "labels", labels, shape_.images, "one per image");
    labels_ = labels;
    LossParts loss;
    loss.aux = with_step_read_backs(space, step, read_backs_, [&](const StepContext& batched) {
      double aux = 0;
      patchify(space, shape_.grid, images, patches_);
      linear_forward(space, patches_, value(patch_w_), vector(patch_b_), patch_tokens_);
      tokens_forward(space, patch_tokens_, cls_value(), value(pos_), residuals_[0]);
      for (std::size_t l = 0; l < blocks_.size(); ++l) aux += blocks_[l]->forward(space, batched, residuals_[l], residuals_[l + 1]);
      layer_norm_forward(space, residuals_.back(), vector(lnf_w_), vector(lnf_b_), lnf_, lnf_mean_, lnf_rstd_);
      pool_forward(space, shape_.pooling, shape_.length(), lnf_, pooled_);
      linear_forward(space, pooled_, value(head_w_), vector(head_b_), probabilities_);
      const std::size_t rows = std::min(counted, shape_.images);
      const CrossEntropySums sums = softmax_cross_entropy_forward(space, probabilities_, labels, loss_terms_, rows);
      loss.cross_entropy = sums.loss / static_cast<double>(rows);
      loss.accuracy = sums.correct / static_cast<double>(rows);
      return aux;
    });
    return loss;
  }

  /// The step's one zeroing: every parameter gradient of the arena and every activation gradient.
  void zero_gradients(const Space& space) {
    parameters_.zero_gradients(space);
    activations_.zero_gradients(space);
  }

  /// Adds the gradients of cross_entropy + aux for the last forward into the zeroed arenas, telling `ready` as each
  /// of backward_groups() is final.
  void backward(const Space& space, const GradientsReady& ready = {}) {
    const auto finished = [&](std::size_t group) {
      if (ready) ready(group);
    };
    softmax_cross_entropy_backward(space, probabilities_, labels_, 1.0);
    linear_backward(space, pooled_, value(head_w_), probabilities_, d_pooled_, gradient(head_w_), gradient_vector(head_b_));
    pool_backward(space, shape_.pooling, shape_.length(), d_pooled_, d_lnf_);
    layer_norm_backward(space, residuals_.back(), vector(lnf_w_), lnf_mean_, lnf_rstd_, d_lnf_, d_residuals_.back(),
                        gradient_vector(lnf_w_), gradient_vector(lnf_b_));
    finished(0);
    for (std::size_t l = blocks_.size(); l-- > 0;) {
      blocks_[l]->backward(space, d_residuals_[l + 1], d_residuals_[l]);
      finished(blocks_.size() - l);
    }
    tokens_backward(space, d_residuals_[0], d_patch_tokens_, cls_gradient(), gradient(pos_));
    linear_backward(space, patches_, value(patch_w_), d_patch_tokens_, Mat<T, Space>(), gradient(patch_w_),
                    gradient_vector(patch_b_));
    finished(blocks_.size() + 1);
  }

 private:
  /// "h<l>." (built by appends: GCC 12 warns falsely about `"h" + std::to_string(l)`, its bug 105329).
  static std::string layer_prefix(std::size_t l) {
    std::string p("h");
    p.append(std::to_string(l)).push_back('.');
    return p;
  }

  bool has_cls() const { return shape_.pooling == Pooling::class_token; }
  Mat<T, Space> cls_value() const { return has_cls() ? value(cls_) : Mat<T, Space>(); }
  Mat<T, Space> cls_gradient() const { return has_cls() ? gradient(cls_) : Mat<T, Space>(); }
  Mat<T, Space> value(std::size_t i) const { return parameters_.value(i); }
  Mat<T, Space> gradient(std::size_t i) const { return parameters_.gradient(i); }
  Vec<T, Space> vector(std::size_t i) const { return parameters_.value_vector(i); }
  Vec<T, Space> gradient_vector(std::size_t i) const { return parameters_.gradient_vector(i); }

  VitShape shape_;
  ParameterArena<T, Space> parameters_;
  ActivationArena<T, Space> activations_;
  std::size_t patch_w_ = 0, patch_b_ = 0, cls_ = 0, pos_ = 0, lnf_w_ = 0, lnf_b_ = 0, head_w_ = 0, head_b_ = 0;
  std::vector<std::unique_ptr<TransformerBlock<T, Space>>> blocks_;
  std::vector<std::pair<std::size_t, std::size_t>> block_tensors_;  // each block's arena tensors [first, last)
  Labels labels_;
  Mat<T, Space> patches_, patch_tokens_, d_patch_tokens_, lnf_, d_lnf_, pooled_, d_pooled_, probabilities_;
  Kokkos::View<double*, typename Space::memory_space> loss_terms_;  ///< the loss's per-row terms and sums
  std::vector<Mat<T, Space>> residuals_, d_residuals_;
  Vec<T, Space> lnf_mean_, lnf_rstd_;
  ReadBackBatch<Space> read_backs_;
};

}  // namespace camex::examples
