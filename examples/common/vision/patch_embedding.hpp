#pragma once
// A ViT's input: each image [rows x cols] cut into non-overlapping p x p patches, each patch a linear map of its
// pixels to a C-wide token (patch_embedding_*: patchify, then common/nn/linear.hpp), then the sequence of an image
// (tokens_*): a learned class token first where the model pools by it, then the patches in row-major order, plus a
// learned position per place in the sequence:
//
//   x[b, 0]     = cls + pos[0]                       (class-token pooling)
//   x[b, c + i] = W patch_i(image b) + bias + pos[c + i],   c = 1 with a class token, else 0.
//
// Backwards add into their gradients; sums over the batch (d_cls, d_pos) run in image order, one work item per
// entry, so they do not depend on the thread count.

#include <Kokkos_Core.hpp>

#include <cstddef>

#include <camex/core/error.hpp>

#include "common/nn/linear.hpp"
#include "common/nn/tensor.hpp"

namespace camex::examples {

/// How images are cut into patches.
struct PatchGrid {
  std::size_t rows = 0, cols = 0;  ///< image size
  std::size_t patch = 0;           ///< p: patches are p x p

  std::size_t patches() const { return (rows / patch) * (cols / patch); }
  std::size_t patch_pixels() const { return patch * patch; }
  std::size_t pixels() const { return rows * cols; }
  /// Throws unless p divides both sides.
  void check(const char* fn) const {
    if (patch == 0 || rows % patch != 0 || cols % patch != 0)
      throw argument_error(fn, "patch", concat("a divisor of the image's ", rows, " x ", cols), concat(patch));
  }
};

/// patches [B P, p^2] from images [B, rows cols]: patch (i, j) of image b is row b P + i (cols / p) + j, its pixel
/// (u, v) column u p + v.
template <class Space, class T>
void patchify(const Space& space, const PatchGrid& grid, const InMat<T, Space>& images, const Mat<T, Space>& patches) {
  constexpr const char* fn = "patchify";
  grid.check(fn);
  const std::size_t b = images.extent(0), per = grid.patches(), pp = grid.patch_pixels(), p = grid.patch;
  const std::size_t across = grid.cols / p, cols = grid.cols;
  require_shape(fn, "images", images, b, grid.pixels(), "[B, rows x cols]");
  require_shape(fn, "patches", patches, b * per, pp, "[B x patches, p^2]");
  Kokkos::parallel_for("patchify", Kokkos::RangePolicy<Space>(space, 0, b * per * pp), KOKKOS_LAMBDA(std::size_t w) {
    const std::size_t row = w / pp, k = w % pp, image = row / per, at = row % per;
    const std::size_t r = (at / across) * p + k / p, c = (at % across) * p + k % p;
    patches(row, k) = images(image, r * cols + c);
  });
}

/// d_images += the patches' gradient put back in place.
template <class Space, class T>
void unpatchify_add(const Space& space, const PatchGrid& grid, const InMat<T, Space>& d_patches, const Mat<T, Space>& d_images) {
  constexpr const char* fn = "unpatchify_add";
  grid.check(fn);
  const std::size_t b = d_images.extent(0), per = grid.patches(), pp = grid.patch_pixels(), p = grid.patch;
  const std::size_t across = grid.cols / p, cols = grid.cols;
  require_shape(fn, "d_patches", d_patches, b * per, pp, "[B x patches, p^2]");
  require_shape(fn, "d_images", d_images, b, grid.pixels(), "[B, rows x cols]");
  Kokkos::parallel_for("unpatchify_add", Kokkos::RangePolicy<Space>(space, 0, b * per * pp), KOKKOS_LAMBDA(std::size_t w) {
    const std::size_t row = w / pp, k = w % pp, image = row / per, at = row % per;
    const std::size_t r = (at / across) * p + k / p, c = (at % across) * p + k % p;
    d_images(image, r * cols + c) += d_patches(row, k);
  });
}

/// The sequences x [B L, C] from the patch tokens [B P, C], the class token cls [1, C] (empty: mean pooling, L = P)
/// and the positions pos [L, C].
template <class Space, class T>
void tokens_forward(const Space& space, const InMat<T, Space>& patch_tokens, const InMat<T, Space>& cls,
                    const InMat<T, Space>& pos, const Mat<T, Space>& x) {
  constexpr const char* fn = "tokens_forward";
  const std::size_t c = pos.extent(1), l = pos.extent(0), first = cls.size() != 0 ? 1 : 0;
  if (l <= first) throw argument_error(fn, "pos", "a row per place in the sequence, patches included", concat(l, " rows"));
  const std::size_t per = l - first, b = patch_tokens.extent(0) / per;
  require_shape(fn, "patch_tokens", patch_tokens, b * per, c, "[B x patches, C]");
  if (first) require_shape(fn, "cls", cls, 1, c, "[1, C]");
  require_shape(fn, "x", x, b * l, c, "[B x L, C]");
  Kokkos::parallel_for("tokens_forward", Kokkos::RangePolicy<Space>(space, 0, b * l * c), KOKKOS_LAMBDA(std::size_t w) {
    const std::size_t row = w / c, ch = w % c, image = row / l, t = row % l;
    const T token = t < first ? cls(0, ch) : patch_tokens(image * per + t - first, ch);
    x(row, ch) = token + pos(t, ch);
  });
}

/// Adds x's gradient into the patch tokens', the class token's (when there is one) and the positions'.
template <class Space, class T>
void tokens_backward(const Space& space, const InMat<T, Space>& d_x, const Mat<T, Space>& d_patch_tokens,
                     const Mat<T, Space>& d_cls, const Mat<T, Space>& d_pos) {
  constexpr const char* fn = "tokens_backward";
  const std::size_t c = d_pos.extent(1), l = d_pos.extent(0), first = d_cls.size() != 0 ? 1 : 0;
  const std::size_t per = l - first, b = d_patch_tokens.extent(0) / per;
  require_shape(fn, "d_patch_tokens", d_patch_tokens, b * per, c, "[B x patches, C]");
  require_shape(fn, "d_x", d_x, b * l, c, "[B x L, C]");
  Kokkos::parallel_for("tokens_backward[patches]", Kokkos::RangePolicy<Space>(space, 0, b * per * c), KOKKOS_LAMBDA(std::size_t w) {
    const std::size_t row = w / c, ch = w % c, image = row / per, i = row % per;
    d_patch_tokens(row, ch) += d_x(image * l + first + i, ch);
  });
  Kokkos::parallel_for("tokens_backward[positions]", Kokkos::RangePolicy<Space>(space, 0, l * c), KOKKOS_LAMBDA(std::size_t w) {
    const std::size_t t = w / c, ch = w % c;
    T sum = 0;
    for (std::size_t image = 0; image < b; ++image) sum += d_x(image * l + t, ch);
    d_pos(t, ch) += sum;
    if (t < first) d_cls(0, ch) += sum;
  });
}

/// How a ViT turns an image's tokens into one vector.
enum class Pooling {
  class_token,  ///< the final class token's row
  mean,         ///< the mean of the patch tokens
};

/// pooled [B, C] from x [B L, C].
template <class Space, class T>
void pool_forward(const Space& space, Pooling pooling, std::size_t length, const InMat<T, Space>& x, const Mat<T, Space>& pooled) {
  const std::size_t b = pooled.extent(0), c = pooled.extent(1);
  require_shape("pool_forward", "x", x, b * length, c, "[B x L, C]");
  const bool mean = pooling == Pooling::mean;
  Kokkos::parallel_for("pool_forward", Kokkos::RangePolicy<Space>(space, 0, b * c), KOKKOS_LAMBDA(std::size_t w) {
    const std::size_t image = w / c, ch = w % c;
    if (!mean) {
      pooled(image, ch) = x(image * length, ch);
      return;
    }
    double sum = 0;
    for (std::size_t t = 0; t < length; ++t) sum += x(image * length + t, ch);
    pooled(image, ch) = static_cast<T>(sum / static_cast<double>(length));
  });
}

/// d_x += the pooled rows' gradient spread back over the tokens they came from.
template <class Space, class T>
void pool_backward(const Space& space, Pooling pooling, std::size_t length, const InMat<T, Space>& d_pooled, const Mat<T, Space>& d_x) {
  const std::size_t b = d_pooled.extent(0), c = d_pooled.extent(1);
  require_shape("pool_backward", "d_x", d_x, b * length, c, "[B x L, C]");
  const bool mean = pooling == Pooling::mean;
  const T share = static_cast<T>(1.0 / static_cast<double>(length));
  Kokkos::parallel_for("pool_backward", Kokkos::RangePolicy<Space>(space, 0, b * length * c), KOKKOS_LAMBDA(std::size_t w) {
    const std::size_t row = w / c, ch = w % c, image = row / length, t = row % length;
    if (mean) d_x(row, ch) += d_pooled(image, ch) * share;
    else if (t == 0) d_x(row, ch) += d_pooled(image, ch);
  });
}

}  // namespace camex::examples
