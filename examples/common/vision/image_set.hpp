#pragma once
// Labelled image datasets in IDX files, and Fashion-MNIST's splits: the standard 60,000 training and 10,000 test
// images (Debian's dataset-fashion-mnist installs them under /usr/share/datasets/fashion-mnist), with a validation
// split carved from the training file: its last `valid_images` images (the file's order is already shuffled, so
// each class keeps close to a tenth of them: the last 5,000 hold 450 to 527 of each class). The test split is
// never seen in training or validation.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/io/data_error.hpp"
#include "common/vision/idx.hpp"

namespace camex::examples {

/// Grey images of rows x cols bytes, one label each.
struct ImageSet {
  std::size_t rows = 0, cols = 0;
  std::vector<std::uint8_t> pixels;  ///< count x rows x cols
  std::vector<std::uint8_t> labels;  ///< count
  std::size_t count() const { return labels.size(); }
  std::size_t pixels_per_image() const { return rows * cols; }
};

/// The images of `images` ([N, rows, cols]) with the labels of `labels` ([N], each < classes).
inline ImageSet read_image_set(const std::filesystem::path& images, const std::filesystem::path& labels, std::size_t classes) {
  IdxArray x = read_idx(images, 3), y = read_idx(labels, 1);
  if (x.dims[0] != y.dims[0])
    throw data_error("'" + images.string() + "' holds " + std::to_string(x.dims[0]) + " images but '" + labels.string() +
                     "' " + std::to_string(y.dims[0]) + " labels");
  for (std::size_t i = 0; i < y.data.size(); ++i)
    if (y.data[i] >= classes)
      throw data_error("'" + labels.string() + "': label " + std::to_string(i) + " is " + std::to_string(y.data[i]) +
                       ", expected a class below " + std::to_string(classes));
  return {.rows = x.dims[1], .cols = x.dims[2], .pixels = std::move(x.data), .labels = std::move(y.data)};
}

/// Images first .. first + count - 1 of `set`.
inline ImageSet image_range(const ImageSet& set, std::size_t first, std::size_t count) {
  const std::size_t per = set.pixels_per_image();
  ImageSet out;
  out.rows = set.rows;
  out.cols = set.cols;
  out.pixels.assign(set.pixels.begin() + static_cast<std::ptrdiff_t>(first * per),
                    set.pixels.begin() + static_cast<std::ptrdiff_t>((first + count) * per));
  out.labels.assign(set.labels.begin() + static_cast<std::ptrdiff_t>(first),
                    set.labels.begin() + static_cast<std::ptrdiff_t>(first + count));
  return out;
}

struct ImageSplits {
  std::string name;
  std::vector<std::string> classes;
  ImageSet train, valid, test;
};

inline const std::vector<std::string>& fashion_mnist_classes() {
  static const std::vector<std::string> names{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  return names;
}

/// The file `stem` in `dir`, compressed (stem.gz, as Debian installs it) or not.
inline std::filesystem::path idx_file(const std::filesystem::path& dir, const std::string& stem) {
  const auto gz = dir / (stem + ".gz");
  if (std::filesystem::exists(gz)) return gz;
  const auto plain = dir / stem;
  if (std::filesystem::exists(plain)) return plain;
  throw data_error("'" + dir.string() + "' holds neither " + stem + ".gz nor " + stem +
                   " (Debian's dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist; scripts/setup "
                   "installs it)");
}

/// Fashion-MNIST from `dir`: the training file's last `valid_images` images are the validation split.
inline ImageSplits load_fashion_mnist(const std::filesystem::path& dir, std::size_t valid_images) {
  const auto& classes = fashion_mnist_classes();
  ImageSet train = read_image_set(idx_file(dir, "train-images-idx3-ubyte"), idx_file(dir, "train-labels-idx1-ubyte"), classes.size());
  ImageSet test = read_image_set(idx_file(dir, "t10k-images-idx3-ubyte"), idx_file(dir, "t10k-labels-idx1-ubyte"), classes.size());
  if (train.rows != test.rows || train.cols != test.cols)
    throw data_error("'" + dir.string() + "': training images are " + std::to_string(train.rows) + " x " +
                     std::to_string(train.cols) + ", test images " + std::to_string(test.rows) + " x " + std::to_string(test.cols));
  if (valid_images >= train.count())
    throw data_error("a validation split of " + std::to_string(valid_images) + " images leaves no training image of " +
                     std::to_string(train.count()));
  const std::size_t kept = train.count() - valid_images;
  ImageSplits out;
  out.name = "Fashion-MNIST";
  out.classes = classes;
  out.valid = image_range(train, kept, valid_images);
  out.train = image_range(train, 0, kept);
  out.test = std::move(test);
  return out;
}

}  // namespace camex::examples
