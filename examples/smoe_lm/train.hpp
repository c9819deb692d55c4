#pragma once
// The training loop of smoe_lm, for any MLP (dense or merged with any policy): initialise, upcycle or resume;
// step (forward, backward, AdamW); report progress, validation perplexity, the curves as CSV and PNG; checkpoint
// atomically. Everything a step draws (batch windows, router noise, DARE masks) is keyed by (seed, step), and
// the checkpoint holds the parameters, both AdamW moments and the step, so a resumed run continues exactly as
// the uninterrupted one would have (on the same backend and thread count).

#include <Kokkos_Core.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "common/data/batches.hpp"
#include "common/io/safetensors.hpp"
#include "common/train/adamw.hpp"
#include "common/train/curves.hpp"
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

/// One batch's token ids on the device, filled from the training split (by step) or the validation split.
template <class Space>
class DeviceBatch {
 public:
  explicit DeviceBatch(std::size_t tokens)
      : inputs_("inputs", tokens), targets_("targets", tokens), host_inputs_(Kokkos::create_mirror_view(inputs_)),
        host_targets_(Kokkos::create_mirror_view(targets_)) {}

  void training(const LmData& data, std::uint64_t seed, std::uint64_t step) {
    data.train->training_batch(seed, step, host_inputs_.data(), host_targets_.data());
    upload();
  }
  void evaluation(const LmData& data, std::size_t b) {
    data.valid->evaluation_batch(b, host_inputs_.data(), host_targets_.data());
    upload();
  }
  TokenIds<Space> inputs() const { return inputs_; }
  TokenIds<Space> targets() const { return targets_; }
  /// The host copies of the last batch.
  const std::int32_t* host_inputs() const { return host_inputs_.data(); }
  const std::int32_t* host_targets() const { return host_targets_.data(); }

 private:
  void upload() {
    Kokkos::deep_copy(inputs_, host_inputs_);
    Kokkos::deep_copy(targets_, host_targets_);
  }
  using Ids = Kokkos::View<std::int32_t*, typename Space::memory_space>;
  Ids inputs_, targets_;
  typename Ids::HostMirror host_inputs_, host_targets_;
};

inline GptShape gpt_shape(const TrainConfig& c, std::size_t vocab) {
  return {.vocab = vocab, .context = c.context, .channels = c.channels, .heads = c.heads, .layers = c.layers,
          .hidden = c.hidden_width(), .sequences = c.batch};
}

inline constexpr const char* checkpoint_format = "camex.smoe_lm.v2";  // v2: records the tokenizer's hash

/// Throws unless the checkpoint `file` (at `path`) was written with the tokenizer whose hash is `hash`: token ids,
/// and so the embedding rows, mean nothing under another one.
inline void require_tokenizer(const SafetensorsFile& file, const std::filesystem::path& path, const std::string& hash) {
  if (!file.has_metadata("tokenizer"))
    throw checkpoint_error("'" + path.string() + "' records no tokenizer (written by an older smoe_lm); this run's is " + hash);
  if (file.metadata("tokenizer") != hash)
    throw checkpoint_error("'" + path.string() + "' was trained with the tokenizer " + file.metadata("tokenizer") +
                           "; this run's is " + hash + " (another corpus, vocabulary size or tokenizer build)");
}

/// The options that define the model's tensors: a checkpoint must agree on them to be resumed.
inline nlohmann::json model_defining(const TrainConfig& c) {
  return {{"vocab", c.vocab}, {"context", c.context}, {"channels", c.channels}, {"heads", c.heads}, {"layers", c.layers},
          {"hidden", c.hidden_width()}, {"policy", c.policy}, {"experts", c.experts}, {"rank", c.rank}, {"batch", c.batch}};
}

template <class T, class Space>
HostTensor host_tensor(const std::string& name, const std::vector<std::size_t>& shape, const typename Parameter<T, Space>::Flat& flat) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, flat);
  HostTensor t{name, dtype_of<T>(), shape, std::vector<unsigned char>(host.extent(0) * sizeof(T))};
  std::memcpy(t.bytes.data(), host.data(), t.bytes.size());
  return t;
}

template <class T, class Space>
void load_tensor(const SafetensorsFile& file, const std::string& name, const std::vector<std::size_t>& shape,
                 const typename Parameter<T, Space>::Flat& flat) {
  auto host = Kokkos::create_mirror_view(flat);
  std::memcpy(host.data(), file.tensor(name, dtype_of<T>(), shape), host.extent(0) * sizeof(T));
  Kokkos::deep_copy(flat, host);
}

template <class T, class Space>
void save_checkpoint(const std::filesystem::path& path, const TrainConfig& c, const LmData& data,
                     const AdamW<T, Space>& adam) {
  std::vector<HostTensor> tensors;
  const auto& list = adam.tensors();
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto& t = list[i];
    tensors.push_back(host_tensor<T, Space>(t.name, t.shape, t.flat.value));
    tensors.push_back(host_tensor<T, Space>("adamw.m/" + t.name, t.shape, adam.first_moment(i)));
    tensors.push_back(host_tensor<T, Space>("adamw.v/" + t.name, t.shape, adam.second_moment(i)));
  }
  nlohmann::json config = c;
  write_safetensors(path, tensors,
                    {{"format", checkpoint_format}, {"step", std::to_string(adam.steps_taken())}, {"config", config.dump()},
                     {"model", model_defining(c).dump()}, {"tokenizer", data.tokenizer_hash}});
}

/// Restores the parameters, the moments and the step count; returns the step.
template <class T, class Space>
std::uint64_t load_checkpoint(const std::filesystem::path& path, const TrainConfig& c, const LmData& data,
                              AdamW<T, Space>& adam) {
  const SafetensorsFile file(path);
  if (file.metadata("format") != checkpoint_format)
    throw checkpoint_error("'" + path.string() + "' is a '" + file.metadata("format") + "' file, expected " + checkpoint_format);
  require_tokenizer(file, path, data.tokenizer_hash);
  const auto saved = nlohmann::json::parse(file.metadata("model"));
  if (saved != model_defining(c))
    throw checkpoint_error("'" + path.string() + "' holds a model configured " + saved.dump() + "; this run is " +
                           model_defining(c).dump());
  const auto& list = adam.tensors();
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto& t = list[i];
    load_tensor<T, Space>(file, t.name, t.shape, t.flat.value);
    load_tensor<T, Space>(file, "adamw.m/" + t.name, t.shape, adam.first_moment(i));
    load_tensor<T, Space>(file, "adamw.v/" + t.name, t.shape, adam.second_moment(i));
  }
  const std::uint64_t step = std::stoull(file.metadata("step"));
  adam.set_steps_taken(step);
  return step;
}

/// Copies a dense checkpoint into the model: tensors of the same name and shape as they are, and the dense MLP's
/// weights and biases into every expert and base of the merged MLP (the CAMEx code's upcycling). Returns how many
/// model tensors were set.
template <class T, class Space>
std::size_t upcycle(const std::filesystem::path& path, const LmData& data, const std::vector<NamedTensor<T, Space>>& tensors) {
  const SafetensorsFile file(path);
  require_tokenizer(file, path, data.tokenizer_hash);
  const std::regex expert(R"((h\d+\.mlp\.(fc|proj)\.(weight|bias))\.(experts|base))");
  std::size_t set = 0;
  for (const auto& t : tensors) {
    std::smatch m;
    if (file.contains(t.name)) {
      load_tensor<T, Space>(file, t.name, t.shape, t.flat.value);
      ++set;
    } else if (std::regex_match(t.name, m, expert)) {
      const std::vector<std::size_t> dense_shape(t.shape.begin() + 1, t.shape.end());
      const unsigned char* source = file.tensor(m[1].str(), dtype_of<T>(), dense_shape);
      std::size_t per = 1;
      for (const std::size_t e : dense_shape) per *= e;
      auto host = Kokkos::create_mirror_view(t.flat.value);
      for (std::size_t copy = 0; copy < t.shape[0]; ++copy) std::memcpy(host.data() + copy * per, source, per * sizeof(T));
      Kokkos::deep_copy(t.flat.value, host);
      ++set;
    }
  }
  if (set == 0) throw checkpoint_error("'" + path.string() + "' shares no tensor with this model: expected a dense smoe_lm checkpoint");
  return set;
}

inline std::string clock_text(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

inline std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

/// One forward and backward of step `step`'s batch, written with the parameters for an independent check
/// (examples/smoe_lm/twin.py compare): "param/<name>", "grad/<name>", "inputs", "targets", "probabilities".
template <class T, class Space, class Model>
int dump_step(const TrainConfig& c, const LmData& data, Model& model, const AdamW<T, Space>& adam, std::uint64_t step) {
  const Space space;
  const GptShape& shape = model.shape();
  DeviceBatch<Space> batch(shape.tokens());
  batch.training(data, c.seed, step);
  const auto loss =
      model.forward(space, {.seed = c.seed, .step = step, .stream = 0, .training = true}, batch.inputs(), batch.targets());
  std::vector<HostTensor> out;
  const auto tokens = [&](const char* name, const std::int32_t* ids) {
    HostTensor t{name, "I32", {shape.sequences, shape.context}, std::vector<unsigned char>(shape.tokens() * 4)};
    std::memcpy(t.bytes.data(), ids, t.bytes.size());
    out.push_back(std::move(t));
  };
  tokens("inputs", batch.host_inputs());
  tokens("targets", batch.host_targets());
  const auto& p = model.probabilities();
  out.push_back(host_tensor<T, Space>("probabilities", {p.extent(0), p.extent(1)}, typename Parameter<T, Space>::Flat(p.data(), p.size())));
  model.backward(space);
  for (const auto& t : adam.tensors()) {
    out.push_back(host_tensor<T, Space>("param/" + t.name, t.shape, t.flat.value));
    out.push_back(host_tensor<T, Space>("grad/" + t.name, t.shape, t.flat.gradient));
  }
  nlohmann::json config = c;
  write_safetensors(c.dump_step, out,
                    {{"format", "camex.smoe_lm.dump.v1"}, {"config", config.dump()}, {"step", std::to_string(step)},
                     {"seed", std::to_string(c.seed)}, {"cross_entropy", exact(loss.cross_entropy)}, {"aux", exact(loss.aux)}});
  std::printf("wrote step %llu's parameters, batch, losses (cross-entropy %.6f, aux %.3e) and gradients to %s\n",
              static_cast<unsigned long long>(step), loss.cross_entropy, loss.aux, c.dump_step.c_str());
  return 0;
}

/// A run whose loss, gradients, activations or optimiser state stopped being finite. Thrown before the step's
/// checkpoint is written, so every checkpoint written so far stays as it was.
class training_diverged : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The report of a diverged run: the step, what became non-finite, the likely cause, and the last good checkpoint.
[[noreturn]] inline void diverged(const TrainConfig& c, std::uint64_t step, const std::string& what,
                                  const std::filesystem::path& checkpoint, std::uint64_t checkpoint_step) {
  char lr[32];
  std::snprintf(lr, sizeof lr, "%g", c.lr);
  std::string message = "training diverged at step " + std::to_string(step) + ": " + what +
                        ". The likely cause is a learning rate too high for this model (--lr " + lr + "): lower it, lengthen the warm-up (--warmup) or tighten the clipping (--clip). ";
  if (!checkpoint.empty())
    message += "The last good checkpoint, " + checkpoint.string() + " (after step " + std::to_string(checkpoint_step) +
               "), is intact: --resume it with other options.";
  else
    message += "No checkpoint was written before it.";
  throw training_diverged(message);
}

template <class Mlp>
int train(const TrainConfig& c, const LmData& data, const std::function<std::unique_ptr<Mlp>(std::size_t)>& make_mlp) {
  using T = float;
  using Space = Kokkos::DefaultExecutionSpace;
  const Space space;
  const GptShape shape = gpt_shape(c, data.vocab);
  Gpt<T, Space, Mlp> model(shape, make_mlp);
  model.arena().initialise(c.seed);
  const auto tensors = model.tensors();
  std::size_t parameters = 0;
  for (const auto& t : tensors) parameters += t.flat.value.extent(0);
  AdamW<T, Space> adam(tensors, {.learning_rate = c.lr, .weight_decay = c.weight_decay, .clip = c.clip, .warmup = c.warmup,
                                 .total = c.steps, .final_fraction = c.final_lr_fraction});
  const std::filesystem::path out(c.out);
  std::filesystem::create_directories(out);
  std::uint64_t start = 0;
  const std::filesystem::path checkpoint = out / "checkpoint.safetensors";
  std::filesystem::path last_checkpoint;  // the last checkpoint this run wrote or resumed from, and its step
  std::uint64_t checkpointed = 0;
  if (!c.resume.empty()) {
    start = load_checkpoint(c.resume, c, data, adam);
    last_checkpoint = c.resume;
    checkpointed = start;
    std::printf("resumed from %s at step %llu\n", c.resume.c_str(), static_cast<unsigned long long>(start));
  } else if (!c.upcycle_from.empty()) {
    std::printf("upcycled %zu tensors from %s\n", upcycle<T, Space>(c.upcycle_from, data, tensors), c.upcycle_from.c_str());
  }
  if (!c.dump_step.empty()) return dump_step(c, data, model, adam, start);
  {
    nlohmann::json config = c;
    write_text_atomically(out / "config.json", config.dump(2) + "\n");
  }
  CurveLog curves(out / "curves.csv", start);
  const double flops_per_token = model_flops_per_token(shape);
  std::printf("smoe_lm: policy %s on %s (%zu train / %zu valid tokens, vocab %zu); %zu layers x %zu channels, %zu "
              "parameters, %.2f MFLOP per token (model, forward + backward); %zu x %zu tokens per step; %s, concurrency %d\n",
              c.policy.c_str(), data.corpus.c_str(), data.train->tokens(), data.valid->tokens(), data.vocab, c.layers,
              c.channels, parameters, flops_per_token / 1e6, c.batch, c.context, Space::name(),
              static_cast<int>(space.concurrency()));
  std::fflush(stdout);

  DeviceBatch<Space> batch(shape.tokens());
  const std::size_t eval_batches = std::min(c.eval_batches, data.valid->evaluation_batches());
  const auto evaluate = [&] {
    double sum = 0;
    for (std::size_t b = 0; b < eval_batches; ++b) {
      batch.evaluation(data, b);
      sum += model.forward(space, {.seed = c.seed, .step = 0, .stream = 0, .training = false}, batch.inputs(), batch.targets())
                 .cross_entropy;
    }
    return sum / static_cast<double>(eval_batches);
  };

  using Clock = std::chrono::steady_clock;
  const auto began = Clock::now();
  auto window_began = began;
  double window_loss = 0, window_aux = 0;
  std::uint64_t window_steps = 0;
  double last_valid = std::nan("");
  double train_seconds = 0, train_tokens = 0;  // steps only, evaluation excluded
  for (std::uint64_t step = start; step < c.steps; ++step) {
    batch.training(data, c.seed, step);
    LossParts loss;
    try {
      loss = model.forward(space, {.seed = c.seed, .step = step, .stream = 0, .training = true}, batch.inputs(),
                           batch.targets());
    } catch (const argument_error& e) {
      // The merged layers reject non-finite tokens (their routing means) and routing scores: the model's own
      // activations, computed from finite parameters, overflowed.
      if (e.argument() != "x" && e.argument() != "scores") throw;
      diverged(c, step, std::string("the activations became non-finite (") + e.what() + ")", last_checkpoint, checkpointed);
    }
    if (!std::isfinite(loss.cross_entropy) || !std::isfinite(loss.aux))
      diverged(c, step, "the loss became " + exact(loss.cross_entropy) + " (auxiliary " + exact(loss.aux) + ")",
               last_checkpoint, checkpointed);
    model.backward(space);
    const double rate = adam.next_rate();
    const double gradient_norm = adam.gradient_norm(space);
    if (!std::isfinite(gradient_norm))
      diverged(c, step, "the gradient norm became " + exact(gradient_norm), last_checkpoint, checkpointed);
    const double norm = adam.step(space, gradient_norm);
    if (const unsigned overflows = adam.last_step_overflows())
      diverged(c, step,
               "the AdamW update left " + std::to_string(overflows) +
                   " parameters or moments non-finite (a gradient norm of " + exact(gradient_norm) +
                   ", whose squares exceed the float range)",
               last_checkpoint, checkpointed);
    window_loss += loss.cross_entropy;
    window_aux += loss.aux;
    ++window_steps;
    const std::uint64_t done = step + 1;
    const bool last = done == c.steps, log_now = done % c.log_every == 0 || last;
    const bool eval_now = done % c.eval_every == 0 || last;
    if (log_now) {
      space.fence();
      const auto now = Clock::now();
      const double window_seconds = std::chrono::duration<double>(now - window_began).count();
      train_seconds += window_seconds;
      train_tokens += static_cast<double>(window_steps * shape.tokens());
      const double ms = 1e3 * window_seconds / static_cast<double>(window_steps);
      const double tokens_per_s = static_cast<double>(window_steps * shape.tokens()) / window_seconds;
      const double eta = static_cast<double>(c.steps - done) * ms / 1e3;
      CurveRow row{.step = done, .train_loss = window_loss / window_steps, .aux_loss = window_aux / window_steps,
                   .learning_rate = rate, .grad_norm = norm, .tokens_per_second = tokens_per_s, .ms_per_step = ms};
      if (eval_now) {
        last_valid = evaluate();
        row.valid_loss = last_valid;
      }
      std::printf("step %6llu/%llu | loss %.4f | aux %.2e | lr %.2e | |g| %.3f | %8.0f tok/s | %7.1f ms/step | ETA %s%s\n",
                  static_cast<unsigned long long>(done), static_cast<unsigned long long>(c.steps), row.train_loss,
                  row.aux_loss, rate, norm, tokens_per_s, ms, clock_text(eta).c_str(),
                  eval_now ? (" | valid loss " + std::to_string(last_valid) + ", perplexity " +
                              std::to_string(std::exp(last_valid))).c_str()
                           : "");
      std::fflush(stdout);
      curves.add(row);
      curves.write();
      window_began = Clock::now();  // evaluation time is not counted as training time
      window_loss = window_aux = 0;
      window_steps = 0;
    }
    if (last || done == c.stop_after || (c.checkpoint_every > 0 && done % c.checkpoint_every == 0)) {
      save_checkpoint(checkpoint, c, data, adam);
      last_checkpoint = checkpoint;
      checkpointed = done;
    }
    if (done == c.stop_after) {
      std::printf("stopped after step %llu (--stop-after); continue with --resume %s\n",
                  static_cast<unsigned long long>(done), (out / "checkpoint.safetensors").c_str());
      return 0;
    }
  }
  if (start >= c.steps) last_valid = evaluate();
  std::string png;
  if (c.plot) png = curves.plot(out / "curves.png", c.policy + " on " + data.corpus);
  std::printf("validation perplexity %.3f (loss %.4f) after %llu steps, %.1f s; training %.0f tokens/s = %.1f GFLOP/s of "
              "model FLOPs\n",
              std::exp(last_valid), last_valid, static_cast<unsigned long long>(c.steps),
              std::chrono::duration<double>(Clock::now() - began).count(), train_seconds > 0 ? train_tokens / train_seconds : 0.0,
              train_seconds > 0 ? flops_per_token * train_tokens / train_seconds / 1e9 : 0.0);
  std::printf("curves: %s%s\ncheckpoint: %s\n", (out / "curves.csv").c_str(), png.empty() ? "" : (" and " + png).c_str(),
              (out / "checkpoint.safetensors").c_str());
  return 0;
}

}  // namespace camex::examples
