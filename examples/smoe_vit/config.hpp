#pragma once
// smoe_vit's configuration: its own part (the dataset, augmentation, and the ViT's shape and where its experts
// are) beside the shared parts of common/train/config.hpp, from a JSON file (--config) and the command line.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cstddef>
#include <string>
#include <vector>

#include "common/train/config.hpp"

namespace camex::examples {

struct VitModelConfig {
  // data
  std::string data = "/usr/share/datasets/fashion-mnist";  ///< a directory of Fashion-MNIST's IDX files
  std::size_t valid_images = 5000;  ///< the training file's last images, held out for validation
  std::size_t pad = 2;              ///< random-crop padding (0: no crop)
  bool flip = true;                 ///< random horizontal flips
  // model
  std::size_t patch = 7, channels = 64, heads = 4, layers = 4, hidden = 0;  ///< hidden 0: 2 x channels
  std::string pooling = "cls";      ///< "cls" (a class token) or "mean"
  std::string moe_layers = "all";   ///< which blocks have merged MLPs: "all", "every-2", "last-2" (any n)

  std::size_t hidden_width() const { return hidden == 0 ? 2 * channels : hidden; }
};

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(VitModelConfig, data, valid_images, pad, flip, patch, channels, heads, layers, hidden,
                                   pooling, moe_layers)

using VitConfig = TrainerConfig<VitModelConfig>;

/// smoe_vit's defaults where they are not the shared ones.
inline VitConfig vit_defaults() {
  VitConfig c;
  c.merge.routing = "image";
  c.optimiser.batch = 128;
  c.optimiser.steps = 4000;
  c.optimiser.lr = 2e-3;
  c.optimiser.warmup = 200;
  c.optimiser.weight_decay = 0.05;
  c.run.out = "runs/smoe_vit";
  c.run.log_every = 50;
  c.run.eval_every = 500;
  c.run.checkpoint_every = 1000;
  c.run.eval_batches = 0;
  return c;
}

inline RoutingChoices vit_routings() {
  return {{{"image", "one merge per image, routed on the mean of its tokens (the SMEAR setting)"},
           {"token", "one merge per token, routed on the token itself (the merged layers apply every expert and mix, "
                     "the order that pays off for groups of one)"}}};
}

/// The blocks (of `layers`) whose MLPs are merged: "all", "every-n" (blocks n-1, 2n-1, ...: V-MoE's every-2 puts
/// experts in every second block, the last included) or "last-n". Throws config_error on anything else.
inline std::vector<bool> merged_blocks(const std::string& placement, std::size_t layers) {
  std::vector<bool> merged(layers, false);
  const auto count = [&](const std::string& prefix) -> std::size_t {
    const std::string digits = placement.substr(prefix.size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 4) return 0;
    return static_cast<std::size_t>(std::stoul(digits));
  };
  if (placement == "all") {
    merged.assign(layers, true);
  } else if (placement.rfind("every-", 0) == 0 && count("every-") > 0) {
    const std::size_t n = count("every-");
    for (std::size_t l = 0; l < layers; ++l) merged[l] = (l + 1) % n == 0;
  } else if (placement.rfind("last-", 0) == 0 && count("last-") > 0 && count("last-") <= layers) {
    for (std::size_t l = layers - count("last-"); l < layers; ++l) merged[l] = true;
  } else {
    option_error("moe-layers", "all, every-<n> or last-<n> with n from 1 to --layers " + std::to_string(layers), "'" + placement + "'");
  }
  bool any = false;
  for (const bool m : merged) any = any || m;
  if (!any) option_error("moe-layers", "a placement that merges at least one of the " + std::to_string(layers) + " blocks", "'" + placement + "'");
  return merged;
}

inline void validate(const VitConfig& c) {
  validate_shared(c.merge, c.optimiser, c.run, vit_routings());
  const VitModelConfig& m = c.task;
  if (m.patch == 0 || 28 % m.patch != 0) option_error("patch", "a divisor of the 28-pixel side (1, 2, 4, 7, 14, 28)", std::to_string(m.patch));
  if (m.channels == 0 || m.heads == 0 || m.channels % m.heads != 0)
    option_error("heads", "a divisor of --channels " + std::to_string(m.channels), std::to_string(m.heads));
  if (m.layers == 0) option_error("layers", "at least 1", "0");
  if (m.pooling != "cls" && m.pooling != "mean") option_error("pooling", "cls or mean", "'" + m.pooling + "'");
  if (m.pad > 8) option_error("pad", "at most 8 pixels", std::to_string(m.pad));
  if (policy_rule(c.merge.policy).experts) merged_blocks(m.moe_layers, m.layers);
}

inline bool parse_command_line(int argc, char** argv, VitConfig& c) {
  CLI::App app{"smoe_vit: trains a vision transformer whose MLPs merge their experts with a camex policy on\n"
               "Fashion-MNIST, printing progress (loss, accuracy, images/s, ETA), validation accuracy, the test accuracy\n"
               "and its confusion matrix, CSV and PNG curves, and safetensors checkpoints (resumable bit for bit)."};
  std::string config_file;
  app.add_option("--config", config_file, "JSON file of options (the keys are the long option names with _ for -); "
                                          "command-line options override it")->check(CLI::ExistingFile);
  read_config_file(argc, argv, c);
  VitModelConfig& m = c.task;
  auto* g = app.add_option_group("data");
  g->add_option("--data", m.data, "directory of Fashion-MNIST's IDX files, compressed or not (Debian's "
                                  "dataset-fashion-mnist, installed by scripts/setup)")->capture_default_str();
  g->add_option("--valid-images", m.valid_images, "the training file's last images held out for validation")->capture_default_str();
  g->add_option("--pad", m.pad, "random crop: the image padded by this many background pixels, then cropped back (0: none)")->capture_default_str();
  g->add_option("--flip", m.flip, "random horizontal flips")->capture_default_str();
  auto* model = app.add_option_group("model");
  model->add_option("--patch", m.patch, "patch side p (p x p pixels per token)")->capture_default_str();
  model->add_option("--channels", m.channels, "model width (C)")->capture_default_str();
  model->add_option("--heads", m.heads, "attention heads (dividing C)")->capture_default_str();
  model->add_option("--layers", m.layers, "transformer blocks")->capture_default_str();
  model->add_option("--hidden", m.hidden, "MLP width (0: 2 C)")->capture_default_str();
  model->add_option("--pooling", m.pooling, "'cls' (a learned class token) or 'mean' (the mean of the patch tokens)")->capture_default_str();
  model->add_option("--moe-layers", m.moe_layers, "blocks whose MLPs merge experts: all, every-<n> (V-MoE's every-2), "
                                                  "last-<n> (V-MoE's last-2); the others stay dense")->capture_default_str();
  add_shared_options(app, c.merge, c.optimiser, c.run, vit_routings(), "images (B)",
                     "parameters, batch, probabilities, losses and every gradient (what twin.py compares)");
  if (!parse_options(app, argc, argv)) return false;
  validate(c);
  return true;
}

}  // namespace camex::examples
