// Image batches: normalisation by the training split's statistics, epochs that visit every image once in an order
// drawn from (seed, epoch), augmentation keyed by (seed, step) (a crop is a shift with background fill, a flip
// mirrors the columns), evaluation batches completed by repeats; and Fashion-MNIST as Debian installs it, with the
// validation split carved from the training file.
#include <boost/test/unit_test.hpp>

#include "common/vision/image_batches.hpp"
#include "common/vision/image_set.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

using namespace camex::examples;

namespace {

/// n images of 3 x 4 pixels, image i's pixel k = 10 i + k (all distinct within an image), label i mod 10.
ImageSet small_set(std::size_t n) {
  ImageSet set;
  set.rows = 3;
  set.cols = 4;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < 12; ++k) set.pixels.push_back(static_cast<std::uint8_t>((10 * i + k) % 251));
    set.labels.push_back(static_cast<std::uint8_t>(i % 10));
  }
  return set;
}

/// The raw pixel value behind a normalised one.
double raw(float v, const PixelStatistics& s) { return (v * s.std + s.mean) * 255.0; }

}  // namespace

BOOST_AUTO_TEST_CASE(statistics_and_evaluation_batches) {
  const ImageSet set = small_set(7);
  const PixelStatistics s = pixel_statistics(set);
  double sum = 0, squares = 0;
  for (const auto p : set.pixels) sum += p / 255.0;
  const double mean = sum / set.pixels.size();
  for (const auto p : set.pixels) squares += (p / 255.0 - mean) * (p / 255.0 - mean);
  BOOST_TEST(std::abs(s.mean - mean) <= 1e-12);
  BOOST_TEST(std::abs(s.std - std::sqrt(squares / set.pixels.size())) <= 1e-9);

  const ImageBatches batches(set, 3, s, "test images");
  BOOST_TEST(batches.evaluation_batches() == 3u);
  std::vector<float> images(3 * 12);
  std::vector<std::int32_t> labels(3);
  BOOST_TEST(batches.evaluation_batch(0, images.data(), labels.data()) == 3u);
  for (std::size_t k = 0; k < 12; ++k) BOOST_TEST(std::abs(raw(images[12 + k], s) - set.pixels[12 + k]) <= 1e-3);
  BOOST_TEST(batches.evaluation_batch(2, images.data(), labels.data()) == 1u);  // image 6, then repeats of 0 and 1
  BOOST_TEST(labels[0] == 6);
  BOOST_TEST(labels[1] == 0);
  BOOST_TEST(labels[2] == 1);
  BOOST_CHECK_THROW(ImageBatches(set, 8, s, "test images"), data_error);
}

BOOST_AUTO_TEST_CASE(epochs_visit_every_image_once) {
  const ImageSet set = small_set(10);
  const ImageBatches batches(set, 5, pixel_statistics(set), "training images");
  const Augmentation none{.pad = 0, .flip = false};
  std::vector<float> images(5 * 12);
  std::vector<std::int32_t> labels(5);
  std::vector<std::uint32_t> first_epoch;
  for (std::uint64_t epoch = 0; epoch < 3; ++epoch) {
    const auto& order = batches.permutation(4, epoch);
    const std::set<std::uint32_t> seen(order.begin(), order.end());
    BOOST_TEST(seen.size() == 10u);
    if (epoch == 0) first_epoch = order;
    else BOOST_TEST((order != first_epoch), "epoch " << epoch << " repeats epoch 0's order");
  }
  // Steps 2 and 3 (epoch 1, two batches of 5) hold each image once, in the epoch's order.
  std::multiset<std::int32_t> labels_seen;
  for (std::uint64_t step = 2; step < 4; ++step) {
    batches.training_batch(4, step, none, images.data(), labels.data());
    for (std::size_t b = 0; b < 5; ++b) {
      const std::uint32_t index = batches.permutation(4, 1)[(step - 2) * 5 + b];
      BOOST_TEST(labels[b] == static_cast<std::int32_t>(set.labels[index]));
      labels_seen.insert(labels[b]);
    }
  }
  BOOST_TEST(labels_seen.size() == 10u);
  BOOST_TEST(std::set<std::int32_t>(labels_seen.begin(), labels_seen.end()).size() == 10u);
  // Another seed, another order (the permutation is a cached reference: copy one before asking for the other).
  const std::vector<std::uint32_t> seed5 = batches.permutation(5, 0);
  BOOST_TEST((seed5 != batches.permutation(4, 0)));
}

BOOST_AUTO_TEST_CASE(augmentation_is_a_shift_and_a_flip_keyed_by_step) {
  const ImageSet set = small_set(8);
  const PixelStatistics s = pixel_statistics(set);
  const ImageBatches batches(set, 8, s, "training images");
  const Augmentation augment{.pad = 1, .flip = true};
  std::vector<float> a(8 * 12), b(8 * 12), plain(8 * 12);
  std::vector<std::int32_t> la(8), lb(8), lp(8);
  batches.training_batch(9, 3, augment, a.data(), la.data());
  batches.training_batch(9, 3, augment, b.data(), lb.data());
  BOOST_TEST((a == b));  // a function of (seed, step)
  BOOST_TEST((la == lb));
  batches.training_batch(9, 3, {.pad = 0, .flip = false}, plain.data(), lp.data());
  BOOST_TEST((la == lp));  // augmentation changes pixels, never which image
  const float background = static_cast<float>(-s.mean / s.std);
  std::size_t flipped = 0, shifted = 0;
  for (std::size_t i = 0; i < 8; ++i) {
    // Find the (dy, dx, flip) that maps the plain image onto the augmented one.
    bool found = false;
    for (long dy = -1; dy <= 1 && !found; ++dy)
      for (long dx = -1; dx <= 1 && !found; ++dx)
        for (int flip = 0; flip < 2 && !found; ++flip) {
          bool same = true;
          for (long r = 0; r < 3 && same; ++r)
            for (long c = 0; c < 4 && same; ++c) {
              const long sr = r + dy, sc = (flip ? 3 - c : c) + dx;
              const float expected = sr >= 0 && sr < 3 && sc >= 0 && sc < 4 ? plain[i * 12 + sr * 4 + sc] : background;
              same = a[i * 12 + r * 4 + c] == expected;
            }
          if (same) {
            found = true;
            flipped += flip;
            shifted += dy != 0 || dx != 0;
          }
        }
    BOOST_TEST(found, "image " << i << " is not a shift and flip of its plain self");
  }
  BOOST_TEST(flipped > 0u);
  BOOST_TEST(flipped < 8u);
  BOOST_TEST(shifted > 0u);
  batches.training_batch(9, 4, augment, b.data(), lb.data());
  BOOST_TEST((a != b));
}

BOOST_AUTO_TEST_CASE(fashion_mnist_as_debian_installs_it) {
  const std::filesystem::path dir = "/usr/share/datasets/fashion-mnist";
  BOOST_REQUIRE_MESSAGE(std::filesystem::exists(dir), dir << " is missing: scripts/setup installs dataset-fashion-mnist");
  const ImageSplits splits = load_fashion_mnist(dir, 5000);
  BOOST_TEST(splits.train.count() == 55000u);
  BOOST_TEST(splits.valid.count() == 5000u);
  BOOST_TEST(splits.test.count() == 10000u);
  BOOST_TEST(splits.train.rows == 28u);
  BOOST_TEST(splits.train.cols == 28u);
  BOOST_TEST(splits.classes.size() == 10u);
  // The validation split keeps every class near a tenth (the file is shuffled); the test split is balanced.
  std::vector<std::size_t> valid(10), test(10);
  for (const auto l : splits.valid.labels) ++valid[l];
  for (const auto l : splits.test.labels) ++test[l];
  for (std::size_t k = 0; k < 10; ++k) {
    BOOST_TEST(valid[k] >= 430u, "class " << k << ": " << valid[k] << " validation images");
    BOOST_TEST(valid[k] <= 570u, "class " << k << ": " << valid[k] << " validation images");
    BOOST_TEST(test[k] == 1000u);
  }
  const PixelStatistics s = pixel_statistics(splits.train);
  BOOST_TEST(std::abs(s.mean - 0.286) <= 0.002);  // Fashion-MNIST's published training mean and deviation
  BOOST_TEST(std::abs(s.std - 0.353) <= 0.002);
  BOOST_CHECK_THROW(load_fashion_mnist(dir, 60000), data_error);
}

// The processes of a data-parallel run each load their share of a batch: together, the whole batch's images,
// augmentations and labels; of an evaluation batch, its images and how many of each share are real.
BOOST_AUTO_TEST_CASE(shares_of_a_batch_make_the_whole_batch) {
  const ImageSet set = small_set(7);
  const PixelStatistics s = pixel_statistics(set);
  const ImageBatches batches(set, 3, s, "training images");
  const Augmentation augment{.pad = 1, .flip = true};
  std::vector<float> whole(3 * 12), part(3 * 12);
  std::vector<std::int32_t> whole_labels(3), part_labels(3);
  batches.training_batch(9, 5, augment, whole.data(), whole_labels.data());  // crosses into the second epoch
  for (const int ranks : {2, 3})
    for (int r = 0; r < ranks; ++r) {
      const BatchShare share = batch_share(3, r, ranks);
      batches.training_batch(9, 5, augment, share, part.data(), part_labels.data());
      BOOST_TEST(std::equal(part.begin(), part.begin() + 12 * share.count, whole.begin() + 12 * share.first));
      BOOST_TEST(std::equal(part_labels.begin(), part_labels.begin() + share.count, whole_labels.begin() + share.first));
    }
  // Evaluation batch 2 holds image 6 and two repeats: the first share of two has one real image, the second none.
  batches.evaluation_batch(2, whole.data(), whole_labels.data());
  BOOST_TEST(batches.evaluation_batch(2, batch_share(3, 0, 2), part.data(), part_labels.data()) == 1u);
  BOOST_TEST(std::equal(part.begin(), part.begin() + 24, whole.begin()));
  BOOST_TEST(batches.evaluation_batch(2, batch_share(3, 1, 2), part.data(), part_labels.data()) == 0u);
  BOOST_TEST(std::equal(part.begin(), part.begin() + 12, whole.begin() + 24));
  BOOST_CHECK_THROW(batches.training_batch(9, 5, augment, BatchShare{.first = 1, .count = 3, .whole = 3}, part.data(),
                                           part_labels.data()),
                    camex::argument_error);
}
