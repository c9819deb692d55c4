#pragma once
// smoe_lm as a task of the shared training loop (common/train/loop.hpp): next-token prediction on a tokenized
// corpus, validation perplexity, checkpoints tied to the tokenizer their embeddings belong to.

#include <Kokkos_Core.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/moe/stores.hpp"
#include "common/text/token_batches.hpp"
#include "common/train/loop.hpp"
#include "config.hpp"
#include "model.hpp"

namespace camex::examples {

/// The tokenized corpus a run trains and validates on.
struct LmData {
  std::string corpus;
  std::filesystem::path tokenizer;
  std::string tokenizer_hash;  ///< Tokenizer::hash(): a checkpoint's embeddings belong to this tokenizer
  std::size_t vocab = 0;
  std::optional<TokenBatches> train, valid;
};

/// The model of a process that trains on `sequences` sequences a step (the whole batch, or its share of it).
inline GptShape gpt_shape(const LmConfig& c, std::size_t vocab, std::size_t sequences) {
  return {.vocab = vocab, .context = c.task.context, .channels = c.task.channels, .heads = c.task.heads,
          .layers = c.task.layers, .hidden = c.task.hidden_width(), .sequences = sequences};
}

inline RoutingLayout lm_routing_layout(const LmConfig& c, std::size_t sequences) {
  const bool sequence = c.merge.routing == "sequence";
  return {.sequences = sequences, .length = c.task.context,
          .granularity = sequence ? Granularity::sequence : Granularity::causal_segment,
          .segment = sequence ? c.task.context : c.merge.segment};
}

/// The merged MLPs of every block of a model of shape `g`.
inline MoeShape lm_moe_shape(const LmConfig& c, const GptShape& g) {
  return {.layers = g.layers, .mlp = {g.channels, g.hidden, g.activation}, .layout = lm_routing_layout(c, g.sequences),
          .experts = c.merge.experts};
}

class LmTask {
 public:
  using ModelConfig = LmModelConfig;
  using Model = Gpt<TrainScalar, TrainSpace>;
  static constexpr const char* checkpoint_format = "camex.smoe_lm.v2";  // v2: records the tokenizer's hash
  static constexpr const char* dump_format = "camex.smoe_lm.dump.v1";

  /// The task of one process of `ranks`, which trains on its share of every batch.
  LmTask(const LmConfig& config, LmData data, const Ranks& ranks)
      : config_(config), data_(std::move(data)), ranks_(ranks), share_(ranks.share(config.optimiser.batch)),
        shape_(gpt_shape(config, data_.vocab, share_.count)), inputs_("inputs", shape_.tokens()),
        targets_("targets", shape_.tokens()), host_inputs_(Kokkos::create_mirror_view(inputs_)),
        host_targets_(Kokkos::create_mirror_view(targets_)) {}

  const LmConfig& config() const { return config_; }
  const GptShape& shape() const { return shape_; }
  const BatchShare& share() const { return share_; }

  void load_training_batch(std::uint64_t step) {
    data_.train->training_batch(config_.optimiser.seed, step, share_, host_inputs_.data(), host_targets_.data());
    upload();
  }

  LossParts forward(Model& model, const TrainSpace& space, const StepContext& step) {
    StepContext shared = step;
    shared.first_group = share_.first * lm_routing_layout(config_, 1).groups();
    return model.forward(space, shared, inputs_, targets_);
  }

  Evaluation evaluate(Model& model, const TrainSpace& space) {
    const std::size_t all = data_.valid->evaluation_batches(), asked = config_.run.eval_batches;
    const std::size_t batches = asked == 0 ? all : std::min(asked, all);
    double sum = 0;
    for (std::size_t b = 0; b < batches; ++b) {
      data_.valid->evaluation_batch(b, share_, host_inputs_.data(), host_targets_.data());
      upload();
      sum += model.forward(space, {.seed = config_.optimiser.seed, .step = 0, .stream = 0, .training = false}, inputs_, targets_)
                 .cross_entropy;
    }
    ranks_.weighted_sum({&sum, 1}, share_.weight());  // every rank's mean over its share of each batch
    const double loss = sum / static_cast<double>(batches);
    return {.loss = loss, .metric = std::exp(loss)};
  }

  double items_per_step() const { return static_cast<double>(share_.whole * shape_.context); }
  double flops_per_item() const { return model_flops_per_token(shape_); }
  CurveColumns curve_columns() const { return {.metric = "perplexity", .items = "tokens", .unit = "tok"}; }

  CheckpointIdentity checkpoint_identity() const {
    const LmModelConfig& m = config_.task;
    const std::string hash = data_.tokenizer_hash;
    return {.format = checkpoint_format,
            .model = {{"vocab", m.vocab}, {"context", m.context}, {"channels", m.channels}, {"heads", m.heads},
                      {"layers", m.layers}, {"hidden", m.hidden_width()}, {"policy", config_.merge.policy},
                      {"experts", config_.merge.experts}, {"rank", config_.merge.rank}, {"batch", config_.optimiser.batch}},
            .metadata = {{"tokenizer", hash}},
            // Token ids, and so the embedding rows, mean nothing under another tokenizer.
            .check = [hash](const SafetensorsFile& file, const std::filesystem::path& path) {
              if (!file.has_metadata("tokenizer"))
                throw checkpoint_error("'" + path.string() + "' records no tokenizer (written by an older smoe_lm); this run's is " + hash);
              if (file.metadata("tokenizer") != hash)
                throw checkpoint_error("'" + path.string() + "' was trained with the tokenizer " + file.metadata("tokenizer") +
                                       "; this run's is " + hash + " (another corpus, vocabulary size or tokenizer build)");
            }};
  }
  std::optional<std::string> dense_name(const std::string& name) const { return dense_mlp_tensor(name); }

  /// The batch ("inputs", "targets") and the probabilities of the forward that just ran.
  std::vector<HostTensor> dump_batch(Model& model) {
    std::vector<HostTensor> out;
    const auto tokens = [&](const char* name, const std::int32_t* ids) {
      HostTensor t{name, "I32", {shape_.sequences, shape_.context}, std::vector<unsigned char>(shape_.tokens() * 4)};
      std::memcpy(t.bytes.data(), ids, t.bytes.size());
      out.push_back(std::move(t));
    };
    tokens("inputs", host_inputs_.data());
    tokens("targets", host_targets_.data());
    const auto& p = model.probabilities();
    out.push_back(host_tensor<TrainScalar, TrainSpace>("probabilities", {p.extent(0), p.extent(1)},
                                                       typename Parameter<TrainScalar, TrainSpace>::Flat(p.data(), p.size())));
    return out;
  }

  std::string describe(std::size_t parameters) const {
    const LmModelConfig& m = config_.task;
    char line[512];
    std::snprintf(line, sizeof line,
                  "smoe_lm: policy %s on %s (%zu train / %zu valid tokens, vocab %zu); %zu layers x %zu channels, %zu "
                  "parameters, %.2f MFLOP per token (model, forward + backward); %zu x %zu tokens per step; %s, concurrency %d",
                  config_.merge.policy.c_str(), data_.corpus.c_str(), data_.train->tokens(), data_.valid->tokens(), data_.vocab,
                  m.layers, m.channels, parameters, flops_per_item() / 1e6, config_.optimiser.batch, m.context,
                  TrainSpace::name(), static_cast<int>(TrainSpace().concurrency()));
    return line;
  }
  std::string evaluation_text(const Evaluation& e) const {
    return "valid loss " + std::to_string(e.loss) + ", perplexity " + std::to_string(e.metric);
  }
  std::string summary(const Evaluation& e) const {
    char line[128];
    std::snprintf(line, sizeof line, "validation perplexity %.3f (loss %.4f)", e.metric, e.loss);
    return line;
  }
  std::string title() const { return config_.merge.policy + " on " + data_.corpus; }
  std::string finish(Model&, const TrainSpace&, const Evaluation&) { return ""; }

 private:
  void upload() {
    Kokkos::deep_copy(inputs_, host_inputs_);
    Kokkos::deep_copy(targets_, host_targets_);
  }

  LmConfig config_;
  LmData data_;
  const Ranks& ranks_;
  BatchShare share_;
  GptShape shape_;
  using Ids = Kokkos::View<std::int32_t*, typename TrainSpace::memory_space>;
  Ids inputs_, targets_;
  typename Ids::HostMirror host_inputs_, host_targets_;
};

}  // namespace camex::examples
