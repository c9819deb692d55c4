#pragma once
// smoe_vit as a task of the shared training loop (common/train/loop.hpp): Fashion-MNIST classification, validation
// accuracy at intervals, the test accuracy and its confusion matrix (CSV and PNG) at the end.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "common/io/atomic_file.hpp"
#include "common/moe/stores.hpp"
#include "common/train/loop.hpp"
#include "common/vision/image_batches.hpp"
#include "common/vision/image_set.hpp"
#include "config.hpp"
#include "model.hpp"

namespace camex::examples {

/// The model of a process that trains on `images` images a step (the whole batch, or its share of it).
inline VitShape vit_shape(const VitConfig& c, std::size_t rows, std::size_t cols, std::size_t classes, std::size_t images) {
  const VitModelConfig& m = c.task;
  return {.grid = {.rows = rows, .cols = cols, .patch = m.patch}, .channels = m.channels, .heads = m.heads,
          .layers = m.layers, .hidden = m.hidden_width(), .classes = classes, .images = images,
          .pooling = m.pooling == "mean" ? Pooling::mean : Pooling::class_token};
}

/// Routing per image (every image one sequence) or per token (every token a sequence of one, routed on itself).
inline RoutingLayout vit_routing_layout(const VitConfig& c, const VitShape& shape) {
  if (c.merge.routing == "token")
    return {.sequences = shape.tokens(), .length = 1, .granularity = Granularity::sequence, .segment = 1};
  return {.sequences = shape.images, .length = shape.length(), .granularity = Granularity::sequence, .segment = shape.length()};
}

/// The merged MLPs: one per block that --moe-layers merges.
inline MoeShape vit_moe_shape(const VitConfig& c, const VitShape& shape) {
  std::size_t merged = 0;
  for (const bool m : merged_blocks(c.task.moe_layers, shape.layers)) merged += m ? 1 : 0;
  return {.layers = merged, .mlp = {shape.channels, shape.hidden, shape.activation}, .layout = vit_routing_layout(c, shape),
          .experts = c.merge.experts};
}

class VitTask {
 public:
  using ModelConfig = VitModelConfig;
  using Model = Vit<TrainScalar, TrainSpace>;
  static constexpr const char* checkpoint_format = "camex.smoe_vit.v1";
  static constexpr const char* dump_format = "camex.smoe_vit.dump.v1";

  /// The task of one process of `ranks`, which trains on its share of every batch.
  VitTask(const VitConfig& config, ImageSplits data, const Ranks& ranks)
      : config_(config), data_(std::move(data)), ranks_(ranks), share_(ranks.share(config.optimiser.batch)),
        statistics_(pixel_statistics(data_.train)),
        shape_(vit_shape(config, data_.train.rows, data_.train.cols, data_.classes.size(), share_.count)),
        train_(data_.train, share_.whole, statistics_, "the " + data_.name + " training split"),
        valid_(data_.valid, share_.whole, statistics_, "the " + data_.name + " validation split"),
        test_(data_.test, share_.whole, statistics_, "the " + data_.name + " test split"),
        images_("images", shape_.images, shape_.grid.pixels()), labels_("labels", shape_.images),
        host_images_(Kokkos::create_mirror_view(images_)), host_labels_(Kokkos::create_mirror_view(labels_)) {}

  const VitConfig& config() const { return config_; }
  const VitShape& shape() const { return shape_; }
  const BatchShare& share() const { return share_; }

  void load_training_batch(std::uint64_t step) {
    train_.training_batch(config_.optimiser.seed, step, {.pad = config_.task.pad, .flip = config_.task.flip}, share_,
                          host_images_.data(), host_labels_.data());
    upload();
  }

  LossParts forward(Model& model, const TrainSpace& space, const StepContext& step) {
    StepContext shared = step;
    shared.first_group = share_.first * (vit_routing_layout(config_, shape_).groups() / shape_.images);
    return model.forward(space, shared, images_, labels_);
  }

  /// The validation split: all of it, or --eval-batches batches of it.
  Evaluation evaluate(Model& model, const TrainSpace& space) { return evaluate_on(model, space, valid_, config_.run.eval_batches, nullptr); }

  double items_per_step() const { return static_cast<double>(share_.whole); }
  double flops_per_item() const { return vit_flops_per_image(shape_); }
  CurveColumns curve_columns() const { return {.metric = "accuracy", .items = "images", .unit = "img"}; }

  CheckpointIdentity checkpoint_identity() const {
    const VitModelConfig& m = config_.task;
    const std::string dataset = data_.name + " " + std::to_string(data_.train.rows) + "x" + std::to_string(data_.train.cols);
    return {.format = checkpoint_format,
            .model = {{"patch", m.patch}, {"channels", m.channels}, {"heads", m.heads}, {"layers", m.layers},
                      {"hidden", m.hidden_width()}, {"pooling", m.pooling}, {"moe_layers", m.moe_layers},
                      {"classes", data_.classes.size()}, {"policy", config_.merge.policy}, {"experts", config_.merge.experts},
                      {"rank", config_.merge.rank}, {"routing", config_.merge.routing}, {"batch", config_.optimiser.batch}},
            .metadata = {{"dataset", dataset}},
            .check = [dataset](const SafetensorsFile& file, const std::filesystem::path& path) {
              if (!file.has_metadata("dataset") || file.metadata("dataset") != dataset)
                throw checkpoint_error("'" + path.string() + "' was trained on " +
                                       (file.has_metadata("dataset") ? "'" + file.metadata("dataset") + "'" : "no recorded dataset") +
                                       "; this run is on '" + dataset + "'");
            }};
  }
  std::optional<std::string> dense_name(const std::string& name) const { return dense_mlp_tensor(name); }

  /// The batch ("images", "labels") and the probabilities of the forward that just ran.
  std::vector<HostTensor> dump_batch(Model& model) {
    std::vector<HostTensor> out;
    HostTensor images{"images", dtype_of<TrainScalar>(), {shape_.images, shape_.grid.rows, shape_.grid.cols},
                      std::vector<unsigned char>(host_images_.size() * sizeof(TrainScalar))};
    std::memcpy(images.bytes.data(), host_images_.data(), images.bytes.size());
    out.push_back(std::move(images));
    HostTensor labels{"labels", "I32", {shape_.images}, std::vector<unsigned char>(shape_.images * 4)};
    std::memcpy(labels.bytes.data(), host_labels_.data(), labels.bytes.size());
    out.push_back(std::move(labels));
    const auto& p = model.probabilities();
    out.push_back(host_tensor<TrainScalar, TrainSpace>("probabilities", {p.extent(0), p.extent(1)},
                                                       typename Parameter<TrainScalar, TrainSpace>::Flat(p.data(), p.size())));
    return out;
  }

  std::string describe(std::size_t parameters) const {
    const VitModelConfig& m = config_.task;
    char line[640];
    std::snprintf(line, sizeof line,
                  "smoe_vit: policy %s (%s) on %s (%zu train / %zu valid / %zu test images, "
                  "%zu classes); %zu layers x %zu channels, patches %zux%zu (%zu tokens per image), %zu parameters, "
                  "%.2f MFLOP per image (model, forward + backward); %zu images per step; %s, concurrency %d",
                  config_.merge.policy.c_str(),
                  policy_rule(config_.merge.policy).experts
                      ? (config_.merge.routing + " routing, experts in " + m.moe_layers + " blocks").c_str()
                      : "dense MLPs",
                  data_.name.c_str(),
                  data_.train.count(), data_.valid.count(), data_.test.count(), data_.classes.size(), m.layers, m.channels,
                  m.patch, m.patch, shape_.length(), parameters, flops_per_item() / 1e6, share_.whole, TrainSpace::name(),
                  static_cast<int>(TrainSpace().concurrency()));
    return line;
  }
  std::string evaluation_text(const Evaluation& e) const {
    char line[96];
    std::snprintf(line, sizeof line, "valid loss %.4f, accuracy %.4f", e.loss, e.metric);
    return line;
  }
  std::string summary(const Evaluation& e) const {
    char line[96];
    std::snprintf(line, sizeof line, "validation accuracy %.4f (loss %.4f)", e.metric, e.loss);
    return line;
  }
  std::string title() const {
    if (!policy_rule(config_.merge.policy).experts) return config_.merge.policy + " on " + data_.name;
    return config_.merge.policy + " (" + config_.merge.routing + " routing) on " + data_.name;
  }

  /// The test split, once: its accuracy, and its confusion matrix as CSV and PNG in the run directory.
  std::string finish(Model& model, const TrainSpace& space, const Evaluation&) {
    const std::size_t k = data_.classes.size();
    std::vector<std::size_t> confusion(k * k, 0);
    const Evaluation test = evaluate_on(model, space, test_, 0, &confusion);
    if (!ranks_.leader()) return "";
    const std::filesystem::path out(config_.run.out);
    write_atomically(out / "confusion.csv", [&](std::ofstream& f) {
      f << "true\\predicted";
      for (const auto& name : data_.classes) f << ',' << name;
      f << '\n';
      for (std::size_t t = 0; t < k; ++t) {
        f << data_.classes[t];
        for (std::size_t p = 0; p < k; ++p) f << ',' << confusion[t * k + p];
        f << '\n';
      }
    });
    const std::string png = plot_confusion(out, confusion);
    char line[256];
    std::snprintf(line, sizeof line, "test accuracy %.4f (loss %.4f) on %zu images\nconfusion matrix: %s%s\n", test.metric,
                  test.loss, data_.test.count(), (out / "confusion.csv").c_str(), png.empty() ? "" : (" and " + png).c_str());
    return line;
  }

 private:
  void upload() {
    Kokkos::deep_copy(images_, host_images_);
    Kokkos::deep_copy(labels_, host_labels_);
  }

  /// Mean loss and accuracy over `batches` batches of `split` (0: all of it, the last batch's repeats not counted);
  /// with `confusion`, also counts (true class, predicted class) into it.
  Evaluation evaluate_on(Model& model, const TrainSpace& space, const ImageBatches& split, std::size_t batches,
                         std::vector<std::size_t>* confusion) {
    const std::size_t total = batches == 0 ? split.evaluation_batches() : std::min(batches, split.evaluation_batches());
    const std::size_t k = data_.classes.size();
    double loss = 0, correct = 0, counted = 0;
    for (std::size_t b = 0; b < total; ++b) {
      const std::size_t real = split.evaluation_batch(b, share_, host_images_.data(), host_labels_.data());
      if (real == 0) continue;  // this rank's share of the last batch holds only repeats
      upload();
      const LossParts parts = model.forward(space, {.seed = config_.optimiser.seed, .step = 0, .stream = 0, .training = false},
                                            images_, labels_, real);
      loss += parts.cross_entropy * static_cast<double>(real);
      correct += parts.accuracy.value_or(0) * static_cast<double>(real);
      counted += static_cast<double>(real);
      if (confusion) {
        const auto p = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, model.probabilities());
        for (std::size_t i = 0; i < real; ++i) {
          std::size_t best = 0;
          for (std::size_t c = 1; c < k; ++c)
            if (p(i, c) > p(i, best)) best = c;
          ++(*confusion)[static_cast<std::size_t>(host_labels_(i)) * k + best];
        }
      }
    }
    if (ranks_.size() > 1) {  // every rank's sums and counts, added
      std::vector<double> sums{loss, correct, counted};
      if (confusion) sums.insert(sums.end(), confusion->begin(), confusion->end());
      ranks_.weighted_sum(sums, 1.0);
      loss = sums[0];
      correct = sums[1];
      counted = sums[2];
      if (confusion)
        for (std::size_t i = 0; i < confusion->size(); ++i) (*confusion)[i] = static_cast<std::size_t>(sums[3 + i]);
    }
    return {.loss = loss / counted, .metric = correct / counted};
  }

  /// confusion.png by gnuplot (a heat map with the counts written in), or "" where gnuplot is missing or fails.
  std::string plot_confusion(const std::filesystem::path& out, const std::vector<std::size_t>& confusion) const {
    const std::size_t k = data_.classes.size();
    const std::filesystem::path data = out / "confusion.dat", script = out / "confusion.gp", png = out / "confusion.png",
                                temporary = out / "confusion.tmp.png";
    {
      std::ofstream d(data);
      for (std::size_t t = 0; t < k; ++t)
        for (std::size_t p = 0; p < k; ++p) d << p << ' ' << t << ' ' << confusion[t * k + p] << '\n';
      std::ofstream gp(script);
      gp << "set terminal pngcairo size 900,800\nset output '" << temporary.string() << "'\n"
         << "set title 'test confusion matrix: " << title() << "'\nset xlabel 'predicted'\nset ylabel 'true'\n"
         << "set xrange [-0.5:" << k - 0.5 << "]\nset yrange [" << k - 0.5 << ":-0.5]\nset palette defined (0 'white', 1 '#08306b')\n"
         << "set xtics rotate by 45 right (";
      for (std::size_t c = 0; c < k; ++c) gp << (c ? ", " : "") << "'" << data_.classes[c] << "' " << c;
      gp << ")\nset ytics (";
      for (std::size_t c = 0; c < k; ++c) gp << (c ? ", " : "") << "'" << data_.classes[c] << "' " << c;
      gp << ")\nplot '" << data.string() << "' using 1:2:3 with image notitle, '' using 1:2:(sprintf('%d', $3)) with labels notitle\n";
    }
    const std::string command = "gnuplot '" + script.string() + "' 2>/dev/null";
    const bool ok = config_.run.plot && std::system(command.c_str()) == 0 && std::filesystem::exists(temporary);
    std::error_code ec;
    std::filesystem::remove(script, ec);
    std::filesystem::remove(data, ec);
    if (!ok) return "";
    std::filesystem::rename(temporary, png);
    return png.string();
  }

  VitConfig config_;
  ImageSplits data_;
  const Ranks& ranks_;
  BatchShare share_;
  PixelStatistics statistics_;
  VitShape shape_;
  ImageBatches train_, valid_, test_;
  Kokkos::View<TrainScalar**, Kokkos::LayoutRight, typename TrainSpace::memory_space> images_;
  Kokkos::View<std::int32_t*, typename TrainSpace::memory_space> labels_;
  typename decltype(images_)::HostMirror host_images_;
  typename decltype(labels_)::HostMirror host_labels_;
};

}  // namespace camex::examples
