#pragma once
// Batches of images for a classifier, as floats normalised by the training split's pixel mean and standard
// deviation, and their labels.
//
// Training batches walk the training split in epochs, each epoch a permutation drawn from camex's counter-based
// generator keyed by (seed, epoch): image b of step s is position s B + b of that walk. Augmentation (a random crop
// of the image padded by `pad` pixels of background on every side, and a horizontal flip with probability 1/2) is
// keyed by (seed, step, b). A batch is therefore a function of (seed, step) alone: a resumed run sees exactly the
// batches and augmentations the uninterrupted one saw, with no loader state to save. Evaluation batches are the
// split in order, B per batch; the last batch is completed by repeating the split's first images, and
// evaluation_batch says how many of its images are real. A process of a data-parallel run loads its share of each
// batch (images [first, first + count) of the B), drawn and augmented as they are for the whole batch.

#include <camex/core/random.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "common/io/data_error.hpp"
#include "common/parallel/batch_share.hpp"
#include "common/vision/image_set.hpp"

namespace camex::examples {

struct Augmentation {
  std::size_t pad = 2;  ///< crop offsets in [-pad, pad] on each axis (0: no crop)
  bool flip = true;     ///< horizontal flips
};

/// Mean and standard deviation of a set's pixels, scaled to [0, 1].
struct PixelStatistics {
  double mean = 0, std = 1;
};

inline PixelStatistics pixel_statistics(const ImageSet& set) {
  double sum = 0, squares = 0;
  for (const std::uint8_t p : set.pixels) {
    const double v = p / 255.0;
    sum += v;
    squares += v * v;
  }
  const double n = static_cast<double>(set.pixels.size()), mean = sum / n;
  return {mean, std::sqrt(std::max(squares / n - mean * mean, 1e-12))};
}

class ImageBatches {
 public:
  ImageBatches(const ImageSet& set, std::size_t batch, const PixelStatistics& statistics, const std::string& what)
      : set_(set), batch_(batch), statistics_(statistics) {
    if (batch == 0) throw data_error(what + ": a batch of 0 images");
    if (set.count() < batch)
      throw data_error(what + " holds " + std::to_string(set.count()) + " images: expected at least one batch of " +
                       std::to_string(batch));
  }

  std::size_t images() const { return set_.count(); }
  std::size_t batch() const { return batch_; }
  std::size_t pixels_per_image() const { return set_.pixels_per_image(); }
  /// Batches that cover the split once (the last one completed by repeats).
  std::size_t evaluation_batches() const { return (set_.count() + batch_ - 1) / batch_; }

  /// The training batch of `step`: images [B, rows x cols] and labels [B].
  void training_batch(std::uint64_t seed, std::uint64_t step, const Augmentation& augmentation, float* images,
                      std::int32_t* labels) const {
    training_batch(seed, step, augmentation, whole_batch(batch_), images, labels);
  }
  /// `share` of it: images [share.count, rows x cols] and labels [share.count].
  void training_batch(std::uint64_t seed, std::uint64_t step, const Augmentation& augmentation, const BatchShare& share,
                      float* images, std::int32_t* labels) const {
    check(share);
    const std::size_t n = set_.count();
    const CounterRng rng(seed, step);
    for (std::size_t i = 0; i < share.count; ++i) {
      const std::size_t b = share.first + i;
      const std::uint64_t position = step * batch_ + b;
      const std::size_t index = permutation(seed, position / n)[position % n];
      const std::uint32_t draw = rng.bits({.stream = 1, .expert = 0, .element = b});
      const std::size_t span = 2 * augmentation.pad + 1;
      const long dy = static_cast<long>((draw & 0xffu) % span) - static_cast<long>(augmentation.pad);
      const long dx = static_cast<long>(((draw >> 8) & 0xffu) % span) - static_cast<long>(augmentation.pad);
      const bool flip = augmentation.flip && ((draw >> 16) & 1u);
      write_image(index, dy, dx, flip, images + i * pixels_per_image());
      labels[i] = set_.labels[index];
    }
  }

  /// Evaluation batch `e` (< evaluation_batches()); returns how many of its B images are the split's (the rest
  /// repeat its first images and are not to be counted).
  std::size_t evaluation_batch(std::size_t e, float* images, std::int32_t* labels) const {
    return evaluation_batch(e, whole_batch(batch_), images, labels);
  }
  /// `share` of it; returns how many of the share's images are the split's.
  std::size_t evaluation_batch(std::size_t e, const BatchShare& share, float* images, std::int32_t* labels) const {
    check(share);
    const std::size_t first = e * batch_, real = std::min(batch_, set_.count() - first);
    for (std::size_t i = 0; i < share.count; ++i) {
      const std::size_t b = share.first + i, index = b < real ? first + b : b - real;
      write_image(index, 0, 0, false, images + i * pixels_per_image());
      labels[i] = set_.labels[index];
    }
    return real > share.first ? std::min(share.count, real - share.first) : 0;
  }

  /// The walk's order in `epoch`: a Fisher-Yates shuffle drawn from CounterRng(seed, epoch).
  const std::vector<std::uint32_t>& permutation(std::uint64_t seed, std::uint64_t epoch) const {
    if (!order_.empty() && order_seed_ == seed && order_epoch_ == epoch) return order_;
    order_.resize(set_.count());
    std::iota(order_.begin(), order_.end(), 0u);
    const CounterRng rng(seed, epoch);
    for (std::size_t i = order_.size(); i-- > 1;) {
      const std::uint64_t wide = (static_cast<std::uint64_t>(rng.bits({.stream = 0, .expert = 0, .element = 2 * i})) << 32) |
                                 rng.bits({.stream = 0, .expert = 0, .element = 2 * i + 1});
      std::swap(order_[i], order_[wide % (i + 1)]);
    }
    order_seed_ = seed;
    order_epoch_ = epoch;
    return order_;
  }

 private:
  void check(const BatchShare& share) const {
    if (share.whole != batch_ || share.first + share.count > batch_)
      throw argument_error("ImageBatches", "share", "images within the batch of " + std::to_string(batch_),
                           concat("[", share.first, ", ", share.first + share.count, ") of ", share.whole));
  }

  /// Image `index` shifted by (dy, dx) (background where it leaves the image), flipped if asked, normalised.
  void write_image(std::size_t index, long dy, long dx, bool flip, float* out) const {
    const long rows = static_cast<long>(set_.rows), cols = static_cast<long>(set_.cols);
    const std::uint8_t* image = set_.pixels.data() + index * pixels_per_image();
    const double scale = 1 / (255.0 * statistics_.std), shift = statistics_.mean / statistics_.std;
    for (long r = 0; r < rows; ++r)
      for (long c = 0; c < cols; ++c) {
        const long sr = r + dy, sc = (flip ? cols - 1 - c : c) + dx;
        const double raw = sr >= 0 && sr < rows && sc >= 0 && sc < cols ? image[sr * cols + sc] : 0.0;
        out[r * cols + c] = static_cast<float>(raw * scale - shift);
      }
  }

  const ImageSet& set_;
  std::size_t batch_;
  PixelStatistics statistics_;
  mutable std::vector<std::uint32_t> order_;  // the last epoch's permutation, recomputed when another is asked for
  mutable std::uint64_t order_seed_ = 0, order_epoch_ = 0;
};

}  // namespace camex::examples
